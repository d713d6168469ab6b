"""Momentum (EMA) teacher target: the method's EMA copy, its update and schedule, the features, where its state lives,
exact SIGKILL + resume, and pixels + HOG + momentum in one run.

Known answers: the EMA recursion ``ema_k = m_k ema_{k-1} + (1 - m_k) student_k`` recomputed from the student's
weights after every real optimizer step; BootMAE's per-epoch momentum formula (research/finetune-mvit-teachers.md
§4.3) written out by hand; the EMA backbone's own ``forward_intermediates``; a LayerNorm written out by hand.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES, TINY_RUN_OVERRIDES, clip_batch, make_mask
from vmim.config import ConfigError, load_config
from vmim.engine.checkpoint import load
from vmim.engine.hooks import Hook
from vmim.engine.metrics import read_metrics
from vmim.engine.pretrain import PretrainTask, Trainer
from vmim.masking import Masks
from vmim.meta_arch import build_method
from vmim.models import DecoderHead, LinearHead
from vmim.models.loading import read_weights
from vmim.targets import MomentumTarget, build_target
from vmim.meta_arch.ema import momentum_at

REPO = Path(__file__).resolve().parents[1]
MOMENTUM = ["targets.momentum.dim=64", "targets.momentum.head.depth=1", "targets.momentum.head.dim=32",
            "targets.momentum.head.heads=2"]
"""A momentum target on the tiny config's vit_test student (64 wide, 2 blocks), with a one-block decoder."""


def tiny_method(*extra: str):
    return build_method(load_config(None, [*TINY_OVERRIDES, *MOMENTUM, *extra]))


def ema_of(method) -> torch.nn.Module:
    return method.targets["momentum"].ema


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0, msg=name)


# ----------------------------------------------------------------------------------------------------
# (a) the method's EMA copy and the update
# ----------------------------------------------------------------------------------------------------


def test_the_ema_copy_is_the_students_frozen_and_always_in_eval():
    method = tiny_method("model.drop_path=0.5")
    ema, student = ema_of(method), method.backbone
    assert_same_weights(ema, student)
    assert all(e.data_ptr() != s.data_ptr() for e, s in zip(ema.parameters(), student.parameters()))
    assert not any(p.requires_grad for p in ema.parameters())
    assert all(p.requires_grad for p in student.parameters())
    method.train()
    assert student.training and not ema.training and not any(m.training for m in ema.modules())
    pixels = method.normalizer.pixels(clip_batch(b=2, t=4, size=16))
    target = method.targets["momentum"]
    torch.testing.assert_close(target(pixels), target(pixels), rtol=0, atol=0)  # drop path 0.5 would differ


def test_unbound_and_wrong_width_are_refused_and_the_ema_is_the_methods():
    cfg = load_config(None, [*TINY_OVERRIDES, *MOMENTUM])
    target = build_target("momentum", cfg.targets["momentum"], (2, 4, 4), 3)
    with pytest.raises(RuntimeError, match="not bound"):
        target(torch.rand(1, 3, 4, 16, 16))
    with pytest.raises(RuntimeError, match="not bound"):
        target.macs((1, 3, 4, 16, 16))
    method = build_method(cfg)
    target = method.targets["momentum"]  # reads the method's EMA copy; holds no state and never sees the student
    assert target.ema is method.ema["momentum"] and not list(target.state_dict()) and not hasattr(target, "bind")
    with pytest.raises(ValueError, match=r"targets.momentum.dim: 32, but block -1 of the student is 64 wide"):
        tiny_method("targets.momentum.dim=32")
    default = tiny_method("targets.momentum.dim=0")  # the default: the student's width, and the head follows it
    assert default.targets["momentum"].dim == 64 == default.heads["momentum"].head.out_features
    with pytest.raises(ValueError, match=r"blocks\[0\]': 2 is not a block of the 2-block vit_test"):
        tiny_method("targets.momentum.blocks=[2]")
    with pytest.raises(ValueError, match=r"targets.momentum.blocks': \[1, -1\] names a block twice"):
        tiny_method("targets.momentum.blocks=[1,-1]")


def test_one_update_is_m_old_plus_one_minus_m_new():
    """After a real gradient step of the student: ema = m * ema_before + (1 - m) * student_after, buffers copied."""
    torch.manual_seed(0)
    method = tiny_method("targets.momentum.momentum=0.9", "targets.momentum.momentum_end=1.0",
                         "targets.momentum.schedule=cosine")
    ema, student = ema_of(method), method.backbone
    with torch.no_grad():  # an EMA that differs from the student, so both terms count
        for p in ema.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    batch = {"clip": clip_batch(b=2, t=4, size=16), "masks": Masks(make_mask(2, 32, 24))}
    method(batch)["loss"].backward()
    torch.optim.SGD(method.parameters(), lr=1.0).step()
    after = {k: v.clone() for k, v in student.state_dict().items()}
    assert any(not torch.equal(after[k], before[k]) for k in after)

    method.after_step(6, 10)  # progress 5/10: cosine half-way, m = (0.9 + 1.0) / 2
    m = 0.95
    assert method.last_momentum["momentum"] == pytest.approx(m, abs=1e-12)
    params = {name for name, _ in student.named_parameters()}
    for name, value in ema.state_dict().items():
        expected = m * before[name] + (1 - m) * after[name] if name in params else after[name]
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6, msg=name)


class Recorder(Hook):
    """Keeps the student's weights, the EMA's and the momentum after every optimizer step of a real run."""

    def __init__(self):
        self.students: list[dict[str, torch.Tensor]] = []
        self.momenta: list[float] = []

    def before_train(self, trainer) -> None:
        method = trainer.raw_model
        self.initial_student = {k: v.clone() for k, v in method.backbone.state_dict().items()}
        self.initial_ema = {k: v.clone() for k, v in ema_of(method).state_dict().items()}

    def after_step(self, trainer, batch) -> None:  # after MethodAfterStep: the EMA of this step is done
        self.students.append({k: v.clone() for k, v in trainer.raw_model.backbone.state_dict().items()})
        self.momenta.append(trainer.raw_model.last_momentum["momentum"])


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    """6 real steps on the built-in digits (images and clips) with a pixel and a momentum target."""
    run_dir = tmp_path_factory.mktemp("ema_run")
    cfg = load_config(None, [
        *TINY_RUN_OVERRIDES, *MOMENTUM, f"output_dir={run_dir}", "data.datasets.digits_clips.weight=1",
        "data.batch_size=8", "train.steps_per_epoch=3", "train.epochs=2", "optim.warmup_epochs=0", "optim.lr=1e-2",
        "targets.momentum.momentum=0.5", "targets.momentum.momentum_end=1.0", "targets.momentum.schedule=cosine"])
    trainer = Trainer(cfg, PretrainTask(cfg))
    recorder = Recorder()
    trainer.hooks.append(recorder)
    state = trainer.fit()
    assert state.step == 6
    return trainer, recorder, run_dir


def test_ema_after_real_steps_is_the_recursion_over_the_students_weights(ema_run):
    trainer, rec, _ = ema_run
    assert rec.initial_ema.keys() == rec.initial_student.keys()
    for name, value in rec.initial_ema.items():  # the pretraining run's EMA starts as the student
        torch.testing.assert_close(value, rec.initial_student[name], rtol=0, atol=0)
    assert rec.momenta == pytest.approx([momentum_at(k, 6, 0.5, 1.0, "cosine") for k in range(1, 7)], abs=1e-12)
    assert rec.momenta[0] == 0.5 and 0.5 < rec.momenta[-1] < 1.0

    params = {name for name, _ in trainer.raw_model.backbone.named_parameters()}
    expected = dict(rec.initial_ema)
    for m, student in zip(rec.momenta, rec.students):
        expected = {k: m * expected[k] + (1 - m) * student[k] if k in params else student[k] for k in expected}
    final = ema_of(trainer.raw_model).state_dict()
    for name, value in final.items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    # the EMA is neither the student nor its start: the recursion is not trivially met
    last = rec.students[-1]
    assert any(not torch.allclose(final[k], last[k], atol=1e-4) for k in params)
    assert any(not torch.allclose(final[k], rec.initial_ema[k], atol=1e-4) for k in params)


# ----------------------------------------------------------------------------------------------------
# (b) the schedule
# ----------------------------------------------------------------------------------------------------


def test_schedule_values_by_hand():
    # cosine (DINO): start at the first update, the mean half-way, end after the last step
    assert momentum_at(1, 100, 0.996, 1.0, "cosine") == 0.996
    assert momentum_at(51, 100, 0.996, 1.0, "cosine") == pytest.approx(0.998, abs=1e-12)
    assert momentum_at(26, 100, 0.996, 1.0, "cosine") == pytest.approx(
        1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2, abs=1e-12)
    assert momentum_at(101, 100, 0.996, 1.0, "cosine") == 1.0
    # linear and constant
    assert momentum_at(26, 100, 0.9, 1.0, "linear") == pytest.approx(0.925, abs=1e-12)
    assert momentum_at(100, 100, 0.9, 1.0, "linear") == pytest.approx(0.999, abs=1e-12)
    assert momentum_at(1, 100, 0.99, 0.5, "constant") == momentum_at(77, 100, 0.99, 0.5, "constant") == 0.99
    # piecewise linear through milestones
    assert momentum_at(26, 100, 0.0, 1.0, "linear", [0.5], [0.9]) == pytest.approx(0.45, abs=1e-12)
    assert momentum_at(76, 100, 0.0, 1.0, "linear", [0.5], [0.9]) == pytest.approx(0.95, abs=1e-12)
    with pytest.raises(ValueError, match="linear"):
        momentum_at(1, 10, 0.9, 1.0, "cosine", [0.5], [0.95])
    with pytest.raises(ValueError, match="unknown momentum schedule"):
        momentum_at(1, 10, 0.9, 1.0, "step")


def bootmae_reference(epoch: int) -> float:
    """BootMAE's ``adjust_ema_momentum`` with --model_ema_decay 0.999 --model_ema_dynamic (research §4.3)."""
    if epoch < 100:
        return 0.999 + epoch / 100 * (0.9999 - 0.999)
    return 0.9999 + min(300, epoch - 100) / 300 * (0.99999 - 0.9999)


def test_bootmae_config_schedule_equals_the_reference_per_epoch():
    """One step per epoch: the update after step e + 1 uses the momentum BootMAE sets for epoch e."""
    cfg = load_config(REPO / "configs/methods/bootmae_vit_b.yaml", ["data.datasets.digits_images.weight=1"])
    t = cfg.targets["momentum"]
    ours = [momentum_at(e + 1, 800, t.momentum, t.momentum_end, t.schedule, t.milestones, t.milestone_momenta)
            for e in range(800)]
    assert ours == pytest.approx([bootmae_reference(e) for e in range(800)], abs=1e-12)


@pytest.mark.parametrize("override, key", [
    ("targets.momentum.schedule=cosin", "targets.momentum.schedule"),
    ("targets.momentum.momentum=1.5", "targets.momentum.momentum"),
    ("targets.momentum.dim=-1", "targets.momentum.dim"),
    ("targets.momentum.blocks=[]", "targets.momentum.blocks"),
    ("targets.momentum.milestones=[0.5]", "targets.momentum.milestones"),  # cosine with milestones
])
def test_bad_momentum_config_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [*TINY_OVERRIDES, *MOMENTUM, override])
    assert err.value.key == key


def test_milestones_must_increase_and_pair_with_momenta():
    base = [*TINY_OVERRIDES, *MOMENTUM, "targets.momentum.schedule=linear"]
    with pytest.raises(ConfigError) as err:
        load_config(None, [*base, "targets.momentum.milestones=[0.5,0.25]", "targets.momentum.milestone_momenta=[1,1]"])
    assert err.value.key == "targets.momentum.milestones"
    with pytest.raises(ConfigError) as err:
        load_config(None, [*base, "targets.momentum.milestones=[0.5]"])
    assert err.value.key == "targets.momentum.milestone_momenta"


# ----------------------------------------------------------------------------------------------------
# (c) the features
# ----------------------------------------------------------------------------------------------------


def perturbed(method):
    """The method with its EMA moved away from the student (the target must read the EMA, not the student)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ema_of(method).parameters():
            p.mul_(1.5).add_(0.05 * torch.randn_like(p))
    return method


@pytest.mark.parametrize("frames", [4, 1], ids=["clip", "image"])
def test_features_are_the_ema_backbones_own_block_output_on_every_token(frames):
    method = perturbed(tiny_method())
    assert not method.backbone.dense  # a visible-only student: the EMA still encodes every token
    pixels = method.normalizer.pixels(clip_batch(b=2, t=frames, size=16, seed=3))
    got = method.targets["momentum"](pixels)
    n = max(frames // 2, 1) * 4 * 4  # an image is repeated to the tubelet: one time slice
    assert got.shape == (2, n, 64) and got.dtype == torch.float32 and not got.requires_grad
    with torch.no_grad():
        _, (expected,) = ema_of(method).eval().forward_intermediates(method.normalizer(pixels), None, indices=[-1])
        _, (from_student,) = method.backbone.forward_intermediates(method.normalizer(pixels), None, indices=[-1])
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got, from_student, atol=1e-3)


def test_norm_is_a_layer_norm_without_affine_and_blocks_are_averaged():
    method = perturbed(tiny_method("targets.momentum.norm=true", "targets.momentum.blocks=[0,-1]"))
    pixels = method.normalizer.pixels(clip_batch(b=2, t=4, size=16, seed=4))
    got = method.targets["momentum"](pixels)
    with torch.no_grad():
        _, outs = ema_of(method).forward_intermediates(method.normalizer(pixels), None, indices=[0, 1])

    def layer_norm(x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6)

    torch.testing.assert_close(got, (layer_norm(outs[0]) + layer_norm(outs[1])) / 2, rtol=1e-5, atol=1e-5)


def test_features_under_autocast_are_float32_without_grad():
    method = perturbed(tiny_method())
    pixels = method.normalizer.pixels(clip_batch(b=2, t=4, size=16, seed=5)).requires_grad_(True)
    reference = method.targets["momentum"](pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = method.targets["momentum"](pixels)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert not torch.equal(got, reference)  # it ran in bf16, as the student does under the step's autocast
    assert float((got - reference).norm() / reference.norm()) < 0.02  # bf16 round-off, not another computation


# ----------------------------------------------------------------------------------------------------
# (d) where the EMA lives: checkpoint yes, backbone / optimizer / convert no
# ----------------------------------------------------------------------------------------------------


def test_ema_is_in_the_checkpoint_under_the_method_and_nowhere_else(ema_run):
    trainer, _, run_dir = ema_run
    method = trainer.raw_model
    saved = load(run_dir / "checkpoints" / "last.pt")["model"]
    ema_keys = {k for k in saved if k.startswith("ema.momentum.")}
    backbone_keys = {k for k in saved if k.startswith("backbone.")}
    assert {k[len("ema.momentum."):] for k in ema_keys} == {k[len("backbone."):] for k in backbone_keys}
    assert not [k for k in saved if k.startswith("targets.")]
    for name, value in ema_of(method).state_dict().items():
        torch.testing.assert_close(saved[f"ema.momentum.{name}"], value, rtol=0, atol=0)
    assert any(not torch.equal(saved[f"ema.momentum.{k}"], saved[f"backbone.{k}"])
               for k, _ in method.backbone.named_parameters())

    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in ema_of(method).parameters()}
    assert {id(p) for p in method.backbone.parameters()} <= in_optimizer
    assert in_optimizer == {id(p) for p in method.parameters() if p.requires_grad}

    weights = read_weights(run_dir)  # what vmim convert, fine-tuning and probing read from a run: the student only
    assert set(weights.state_dict) == {k[len("backbone."):] for k in backbone_keys}
    for name, value in weights.state_dict.items():
        torch.testing.assert_close(value, saved[f"backbone.{name}"], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# (e) SIGKILL + resume
# ----------------------------------------------------------------------------------------------------

KILL_RUN = [
    *TINY_RUN_OVERRIDES, *MOMENTUM, "data.datasets.digits_clips.weight=1", "data.batch_size=8",
    "train.steps_per_epoch=4", "train.epochs=3", "optim.warmup_epochs=0.5", "optim.lr=1e-2", "model.drop_path=0.1",
    "targets.momentum.momentum=0.5", "targets.momentum.schedule=cosine", "targets.momentum.norm=true",
    "checkpoint.every_steps=3",
]
"""12 steps in 3 epochs of 4; checkpoints after steps 3, 4 (epoch end), 6, 8 (epoch end), 9, 12."""

KILLER = """
import os, signal, sys
from vmim.config import load_config
from vmim.engine.hooks import Hook
from vmim.engine.pretrain import PretrainTask, Trainer

class KillAt(Hook):
    def after_step(self, trainer, batch):
        if trainer.state.step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

cfg = load_config(None, sys.argv[1:])
trainer = Trainer(cfg, PretrainTask(cfg))
trainer.hooks.append(KillAt())
trainer.fit()
"""


@pytest.mark.slow
def test_sigkill_and_resume_with_an_ema_teacher_match_an_uninterrupted_run(tmp_path):
    """A training process SIGKILLs itself inside step 7 (its EMA update done, nothing saved past step 6): no timing,
    the same point every time. Resuming its run directory (the code of ``vmim pretrain``, in this process) must then
    repeat an uninterrupted run exactly: every step's losses and the final weights, the EMA's included."""
    from vmim.engine.pretrain import pretrain

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    kill_proc = subprocess.Popen([sys.executable, "-c", KILLER.format(step=7), *KILL_RUN, f"output_dir={killed}"],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert pretrain(load_config(None, [*KILL_RUN, f"output_dir={reference}"])).step == 12  # meanwhile
    finally:
        returncode = kill_proc.wait(timeout=300)
    assert returncode == -signal.SIGKILL, kill_proc.stderr.read()

    at_kill = load(killed / "checkpoints" / "last.pt")
    assert at_kill["step"] == 6 and at_kill["train_state"]["batch_in_epoch"] == 2, at_kill["train_state"]
    assert max(r["step"] for r in read_metrics(killed / "metrics.jsonl")) == 7  # step 7 ran, and is lost
    model = at_kill["model"]
    assert any(not torch.equal(model[k], model[f"ema.momentum.{k[len('backbone.'):]}"])
               for k in model if k.startswith("backbone.") and k.endswith(".weight")), "EMA == student: no test"

    assert pretrain(load_config(None, [*KILL_RUN, f"output_dir={killed}"])).step == 12  # resume=auto
    assert "resumed at step 6" in (killed / "log.txt").read_text()
    expected = {r["step"]: r for r in read_metrics(reference / "metrics.jsonl")}
    got = {r["step"]: r for r in read_metrics(killed / "metrics.jsonl")}
    assert sorted(got) == sorted(expected) == list(range(1, 13))
    for step in expected:
        for key in ("loss", "loss/pixel", "loss/momentum"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-6, abs=1e-7), f"step {step} {key}"
    final_ref = load(reference / "checkpoints" / "last.pt")["model"]
    final_got = load(killed / "checkpoints" / "last.pt")["model"]
    assert final_ref.keys() == final_got.keys() and any(k.startswith("ema.momentum.") for k in final_ref)
    for name, tensor in final_ref.items():
        torch.testing.assert_close(final_got[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------------------------
# (f) any combination
# ----------------------------------------------------------------------------------------------------

COMBINATION = [
    *TINY_RUN_OVERRIDES, "model.dense=true", "data.batch_size=8", "train.steps_per_epoch=3", "train.epochs=1",
    "optim.warmup_epochs=0",
    "targets.pixel.norm=joint", "targets.pixel.weight=1.0",  # decoder on masked tokens, MSE
    "targets.hog.cell_size=4", "targets.hog.head.kind=linear", "targets.hog.loss.kind=l1",
    "targets.hog.weight=0.5",  # linear head on the dense encoder's masked tokens, L1
    "targets.momentum.dim=64", "targets.momentum.norm=true", "targets.momentum.head.kind=linear",
    "targets.momentum.head.block=0", "targets.momentum.token_set=visible", "targets.momentum.loss.kind=smooth_l1",
    "targets.momentum.weight=2.0",  # MR-MAE-style: linear head on block 0's visible tokens, smooth L1
]
WEIGHTS = {"pixel": 1.0, "hog": 0.5, "momentum": 2.0}


def test_pixels_hog_and_momentum_in_one_method_each_with_its_head_tokens_and_loss():
    cfg = load_config(None, COMBINATION)
    torch.manual_seed(0)
    method = build_method(cfg)
    assert isinstance(method.heads["pixel"], DecoderHead) and isinstance(method.heads["hog"], LinearHead)
    assert isinstance(method.heads["momentum"], LinearHead) and method.head_blocks == {"momentum": 0}
    assert method.token_sets == {"pixel": "masked", "hog": "masked", "momentum": "visible"}
    assert isinstance(method.targets["momentum"], MomentumTarget) and method.weights == WEIGHTS

    mask = make_mask(2, 32, 24, seed=2)
    batch = {"clip": clip_batch(b=2, t=4, size=16, seed=6), "masks": Masks(mask)}
    with torch.no_grad():
        losses = method(batch)
        pixels, encoded = method.encode(batch["clip"], mask)
        feats = method.targets["momentum"](pixels)[~mask].reshape(2, 8, 64)
        pred = method.heads["momentum"].proj(encoded.blocks[0][~mask].reshape(2, 8, 64))
    by_hand = torch.nn.functional.smooth_l1_loss(pred, feats, beta=1.0)  # 8 visible tokens per clip, all counted
    torch.testing.assert_close(losses["loss/momentum"], by_hand, rtol=1e-5, atol=1e-6)
    total = sum(WEIGHTS[n] * losses[f"loss/{n}"] for n in WEIGHTS)
    torch.testing.assert_close(losses["loss"], total, rtol=1e-6, atol=1e-7)


def test_pixels_hog_and_momentum_train_together_and_log_each_loss(tmp_path):
    from vmim.engine.pretrain import pretrain

    state = pretrain(load_config(None, [*COMBINATION, f"output_dir={tmp_path}"]))
    assert state.step == 3
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        parts = {n: r[f"loss/{n}"] for n in WEIGHTS}
        assert all(math.isfinite(v) and v > 0 for v in parts.values()), r
        assert r["loss"] == pytest.approx(sum(WEIGHTS[n] * parts[n] for n in WEIGHTS), rel=1e-5), r
    saved = load(tmp_path / "checkpoints" / "last.pt")["model"]
    assert any(k.startswith("ema.momentum.") for k in saved)
    assert not any(k.startswith(("targets.pixel.", "targets.hog.")) for k in saved)
