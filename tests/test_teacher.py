"""Frozen-teacher targets (``vmim.targets.teacher``): features equal the teacher's own forward at its blocks (image
teachers on clips see the first frame of each tubelet; video teachers the clip), grid resampling by known answers,
isolation from the student (eval, no grad, bf16 under autocast, float32 out, not in parameters / state_dict /
checkpoint), the teacher record and the refused resume, and MR-MAE's disjoint token sets.

Teachers are tiny models written to ``tmp_path``: a ``vit_test`` saved as one of our checkpoints (or a run
directory), and a timm ``vit_tiny_patch16_224`` built with ``pretrained=False`` at 32 px, its weights saved as a torch
or safetensors file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import TINY_RUN_OVERRIDES, clip_batch, make_mask
from vmim.config import ConfigError, config_to_yaml, load_config, video_grid
from vmim.masking import Masks
from vmim.meta_arch import build_method
from vmim.models import create_backbone, load_backbone
from vmim.models.frozen import Frozen
from vmim.targets import TARGETS, build_target
from vmim.targets.teacher import TeacherError, TeacherTarget, resample_grid, state_dict_sha256

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
"""The teachers' own data stats (not the student's ImageNet defaults): the target must normalize with these."""


def save_vmim_teacher(path: Path, patch: int = 8, tubelet: int = 1, img: int = 16, frames: int = 4, seed: int = 0,
                      cls_token: bool = False) -> nn.Module:
    """A ``vit_test`` backbone saved as one of our pretraining checkpoints (``model`` with ``backbone.*`` keys and the
    resolved config); returns the backbone in eval mode."""
    cfg = load_config(None, [
        "model.backbone=vit_test", f"model.patch_size={patch}", f"model.tubelet_size={tubelet}",
        f"model.cls_token={str(cls_token).lower()}", f"data.img_size={img}", f"data.num_frames={frames}",
        f"data.mean={MEAN}", f"data.std={STD}", "targets.pixel.weight=1", "data.datasets.digits_images.weight=1"])
    torch.manual_seed(seed)
    net = create_backbone(cfg.model, video_grid(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()}, "config": config_to_yaml(cfg),
                "task": "pretrain", "step": 0}, path)
    return net.eval()


def normalized(frames: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """[0, 1] ``(B, C, ...)`` -> (x - mean) / std per channel."""
    shape = (1, -1) + (1,) * (frames.ndim - 2)
    return (frames - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def pixels(b: int = 2, t: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    return clip_batch(b=b, t=t, size=size, seed=seed).float() / 255


def block_outputs(net: nn.Module, x: torch.Tensor, blocks: list[int]) -> dict[int, torch.Tensor]:
    """The vmim backbone's own forward (not forward_intermediates): block outputs ``(B, N, D)``, class token dropped."""
    with torch.no_grad():
        return net(x, blocks=blocks).blocks


# ----------------------------------------------------------------------------------------------------
# Features equal the teacher's own forward
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_run_dir", [False, True])
def test_vmim_image_teacher_sees_the_first_frame_of_each_tubelet(tmp_path, as_run_dir):
    """Student tubelet 2 on 4 frames: tubelet i's targets are the teacher's features of frame 2i (its own data
    stats), blocks concatenated in the order given; the class token is dropped."""
    file = tmp_path / ("run/checkpoints/last.pt" if as_run_dir else "teacher.pt")
    net = save_vmim_teacher(file, cls_token=True)
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "run" if as_run_dir else file), blocks=[-1, 0])
    assert target.image and target.dim == 2 * 64 and target.sha256 == state_dict_sha256(net.state_dict())
    clip = pixels()
    out = target(clip)
    assert out.shape == (2, 2 * 2 * 2, 128) and out.dtype == torch.float32 and not out.requires_grad
    for i in range(2):  # student tubelet i <- frame 2i, as B images
        blocks = block_outputs(net, normalized(clip[:, :, 2 * i: 2 * i + 1]), [-1, 0])
        want = torch.cat([blocks[-1], blocks[0]], dim=-1)  # (B, 4, 128): the order given, not block order
        torch.testing.assert_close(out[:, 4 * i: 4 * (i + 1)], want, atol=1e-5, rtol=1e-5)
    # an image (repeated to the student's tubelet by the normalizer) gets the same targets as its first frame
    image = clip[:, :, :1].expand(-1, -1, 2, -1, -1)
    torch.testing.assert_close(target(image), out[:, :4], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_timm_image_teacher_equals_timm_forward(tmp_path, fmt):
    """A timm ViT (pretrained=False, weights from a local file): final_norm=False gives the last block's raw output,
    final_norm=True timm's forward_features, prefix tokens dropped, input normalized with timm's pretrained_cfg."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    file = tmp_path / f"tiny.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(file))
    else:
        torch.save({"state_dict": net.state_dict()}, file)  # a wrapper level is unwrapped
    clip = pixels(size=32, seed=1)
    frames = normalized(clip[:, :, ::2].transpose(1, 2).reshape(4, 3, 32, 32), [0.5] * 3, [0.5] * 3)  # (B*T') images
    captured = []
    hook = net.blocks[-1].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        final = net.forward_features(frames)[:, net.num_prefix_tokens:]
    hook.remove()
    raw = captured[0][:, net.num_prefix_tokens:]
    for final_norm, want in ((False, raw), (True, final)):
        target = TeacherTarget((2, 16, 16), path=str(file), timm_model="vit_tiny_patch16_224", input_size=32,
                               final_norm=final_norm)
        assert target.image and target.dim == 192 and target.pixel_mean.tolist() == [0.5] * 3
        out = target(clip)  # (B, T'*H'*W', 192): images of sample b are rows b*T' .. of the timm batch
        torch.testing.assert_close(out, want.reshape(2, 2 * 4, 192), atol=1e-5, rtol=1e-5)


def test_vmim_video_teacher_sees_the_clip(tmp_path):
    net = save_vmim_teacher(tmp_path / "video.pt", tubelet=2)
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "video.pt"), final_norm=True)
    assert not target.image and target.dim == 64
    clip = pixels(seed=2)
    with torch.no_grad():
        want = net(normalized(clip)).tokens  # the encoder output: last block + final norm
    torch.testing.assert_close(target(clip), want, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Resampling onto the student grid
# ----------------------------------------------------------------------------------------------------


def test_resample_grid_known_answers():
    x = torch.arange(16.0).view(1, 1, 1, 4, 4)
    down = resample_grid(x, (1, 2, 2))  # finer teacher: the mean of each 2x2 block
    torch.testing.assert_close(down.view(2, 2), torch.tensor([[2.5, 4.5], [10.5, 12.5]]))
    up = resample_grid(torch.tensor([0.0, 4.0]).view(1, 1, 1, 1, 2), (1, 1, 4))  # coarser: bilinear, edges clamped
    torch.testing.assert_close(up.view(4), torch.tensor([0.0, 1.0, 3.0, 4.0]))
    time_up = resample_grid(torch.tensor([0.0, 4.0]).view(1, 1, 2, 1, 1), (4, 1, 1))
    torch.testing.assert_close(time_up.view(4), torch.tensor([0.0, 1.0, 3.0, 4.0]))
    time_down = resample_grid(torch.tensor([0.0, 2.0, 4.0, 10.0]).view(1, 1, 4, 1, 1), (2, 1, 1))
    torch.testing.assert_close(time_down.view(2), torch.tensor([1.0, 7.0]))
    same = torch.randn(2, 3, 2, 3, 5)
    assert torch.equal(resample_grid(same, (2, 3, 5)), same)


def test_finer_teacher_grid_is_block_averaged(tmp_path):
    """Teacher patch 4 (a 4x4 grid on 16 px) under a student patch 8 (2x2): each target is the mean of the 2x2 teacher
    tokens inside the student's patch."""
    net = save_vmim_teacher(tmp_path / "fine.pt", patch=4)
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "fine.pt"))
    clip = pixels(seed=3)
    out = target(clip).view(2, 2, 2, 2, 64)  # (B, T', H', W', D)
    for i in range(2):
        fine = block_outputs(net, normalized(clip[:, :, 2 * i: 2 * i + 1]), [-1])[-1].view(2, 4, 4, 64)
        want = fine.view(2, 2, 2, 2, 2, 64).mean(dim=(2, 4))  # (B, H', 2, W', 2, D) -> block means
        torch.testing.assert_close(out[:, i], want, atol=1e-5, rtol=1e-5)


def test_coarser_teacher_at_another_input_size_is_bilinearly_upsampled(tmp_path):
    """Student 32 px with patch 8 (4x4 grid); teacher at input_size 16 with patch 8 (2x2): per axis the student tokens
    get (1, 0), (.75, .25), (.25, .75), (0, 1) of the two teacher tokens. Frames of one colour each make the resize
    exact, so the teacher's input is known."""
    net = save_vmim_teacher(tmp_path / "coarse.pt", patch=8)
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "coarse.pt"), input_size=16)
    colours = torch.rand(2, 3, 4, 1, 1, generator=torch.Generator().manual_seed(4))
    clip = colours.expand(-1, -1, -1, 32, 32).contiguous()
    out = target(clip).view(2, 2, 4, 4, 64)
    weights = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])  # (student, teacher) per axis
    for i in range(2):
        small = colours[:, :, 2 * i: 2 * i + 1].expand(-1, -1, -1, 16, 16)
        coarse = block_outputs(net, normalized(small), [-1])[-1].view(2, 2, 2, 64)
        want = torch.einsum("hy,wx,byxd->bhwd", weights, weights, coarse)
        torch.testing.assert_close(out[:, i], want, atol=1e-5, rtol=1e-5)


def test_video_teacher_with_a_longer_tubelet_is_resampled_in_time(tmp_path):
    """Teacher tubelet 4 on 4 frames (one time step) under a student tubelet 2 (two): both student time steps take the
    teacher's single one (linear interpolation from one sample)."""
    net = save_vmim_teacher(tmp_path / "long.pt", tubelet=4)
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "long.pt"))
    clip = pixels(seed=5)
    want = block_outputs(net, normalized(clip), [-1])[-1]  # (B, 1*2*2, D)
    torch.testing.assert_close(target(clip), torch.cat([want, want], dim=1), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------
# Isolation: eval, no grad, bf16 under autocast, float32 out, outside parameters and state_dict
# ----------------------------------------------------------------------------------------------------


def test_teacher_runs_bf16_under_autocast_and_returns_float32(tmp_path):
    save_vmim_teacher(tmp_path / "t.pt")
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "t.pt"), norm_features=True)
    net = target.teacher.net
    dtypes = []
    hook = net.blocks[0].mlp.fc2.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    clip = pixels(seed=6).requires_grad_(True)
    reference = target(clip)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = target(clip)
    hook.remove()
    assert dtypes == [torch.float32, torch.bfloat16], "the teacher must follow the step's autocast"
    assert out.dtype == torch.float32 and not out.requires_grad
    assert not torch.equal(out, reference)  # it did run in bf16 ...
    torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)  # ... to bf16 accuracy
    # norm_features: zero mean, unit variance per token (LayerNorm without affine)
    torch.testing.assert_close(reference.mean(-1), torch.zeros(2, 8), atol=1e-5, rtol=0)
    torch.testing.assert_close(reference.var(-1, unbiased=False), torch.ones(2, 8), atol=1e-3, rtol=0)


def test_teacher_is_frozen_and_outside_the_module_tree(tmp_path):
    save_vmim_teacher(tmp_path / "t.pt")
    target = TeacherTarget((2, 8, 8), path=str(tmp_path / "t.pt"))
    net = target.teacher.net
    assert not list(target.parameters()) and not target.state_dict()
    assert all(not p.requires_grad for p in net.parameters())
    assert net not in list(target.modules())
    target.train()
    assert target.training and not net.training, "train() must not reach the teacher"
    net.train()  # even when switched on directly, the forward runs it in eval mode
    target(pixels())
    assert not net.training
    target.double()  # dtype / device moves follow the owner (_apply)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    target.float()
    assert all(p.dtype == torch.float32 for p in net.parameters())
    frozen = Frozen(nn.Linear(3, 4))
    assert frozen.num_params() == 16 and frozen.nbytes() == 64 and not frozen.state_dict()


def test_teacher_errors_name_their_key(tmp_path):
    save_vmim_teacher(tmp_path / "t.pt")
    base = ["model.backbone=vit_test", "model.patch_size=8", "data.img_size=16", "data.num_frames=4",
            "targets.pixel.head.depth=1", "targets.pixel.head.dim=32", "targets.pixel.head.heads=2",
            "data.datasets.digits_images.weight=1", "targets.dino.kind=teacher", "targets.dino.head.depth=1",
            "targets.dino.head.dim=32", "targets.dino.head.heads=2"]
    with pytest.raises(TeacherError, match=r"targets\.dino\.path.*no such file"):
        build_method(load_config(None, base + [f"targets.dino.path={tmp_path / 'missing.pt'}"]))
    with pytest.raises(TeacherError, match=r"targets\.dino\.blocks"):
        build_method(load_config(None, base + [f"targets.dino.path={tmp_path / 't.pt'}", "targets.dino.blocks=[5]"]))
    with pytest.raises(TeacherError, match=r"targets\.dino\.timm_model"):
        build_method(load_config(None, base + [f"targets.dino.path={tmp_path / 't.pt'}",
                                               "targets.dino.timm_model=no_such_model_xyz"]))
    with pytest.raises(ConfigError, match=r"targets\.dino\.path"):
        load_config(None, base)  # no path at all: refused by the config, before anything is built
    with pytest.raises(ConfigError, match=r"targets\.dino\.blocks"):
        load_config(None, base + ["targets.dino.path=x.pt", "targets.dino.blocks=[-1,-1]"])
    with pytest.raises(ConfigError, match=r"targets\.dino\.std"):
        load_config(None, base + ["targets.dino.path=x.pt", "targets.dino.std=[1,0,1]"])
    assert TARGETS["teacher"] is TeacherTarget


# ----------------------------------------------------------------------------------------------------
# Training: weights never change, never saved with the student, a changed teacher refuses the resume
# ----------------------------------------------------------------------------------------------------


def run_config(run_dir: Path, teacher: Path, epochs: int = 1):
    return load_config(None, TINY_RUN_OVERRIDES + [
        f"output_dir={run_dir}", "data.datasets.digits_clips.weight=1", "data.batch_size=2",
        "train.steps_per_epoch=3", f"train.epochs={epochs}", "optim.warmup_epochs=0",
        "targets.teacher.kind=teacher", f"targets.teacher.path={teacher}", "targets.teacher.blocks=[-1,0]",
        "targets.teacher.head.depth=1", "targets.teacher.head.dim=32", "targets.teacher.head.heads=2",
        "targets.teacher.loss.kind=smooth_l1", "targets.teacher.weight=0.5"])


def test_teacher_frozen_through_training_absent_from_checkpoint_and_resume_checked(tmp_path):
    from vmim.engine.checkpoint import load
    from vmim.engine.metrics import read_metrics
    from vmim.engine.pretrain import PretrainTask, Trainer, pretrain

    teacher_file, run_dir = tmp_path / "teacher.pt", tmp_path / "run"
    net = save_vmim_teacher(teacher_file, patch=4)  # the student's grid: patch 4 on 16 px
    original = {k: v.clone() for k, v in net.state_dict().items()}
    trainer = Trainer(run_config(run_dir, teacher_file), PretrainTask(run_config(run_dir, teacher_file)))
    method = trainer.raw_model
    teacher = method.targets["teacher"]
    teacher_params = {id(p) for p in teacher.teacher.net.parameters()}
    assert not teacher_params & {id(p) for p in method.parameters()}
    assert not teacher_params & {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert trainer.fit().step == 3
    assert not teacher.teacher.net.training
    for k, v in teacher.teacher.net.state_dict().items():  # real optimizer steps did not move the teacher
        assert torch.equal(v, original[k]), k

    ckpt = load(run_dir / "checkpoints" / "last.pt")
    assert set(ckpt["model"]) == set(method.state_dict()) and not any(k.startswith("targets.") for k in ckpt["model"])
    n_teacher = sum(v.numel() for v in original.values())
    assert sum(v.numel() for v in ckpt["model"].values()) == sum(v.numel() for v in method.state_dict().values())
    assert sum(p.numel() for p in method.parameters()) + n_teacher > sum(v.numel() for v in ckpt["model"].values())
    record = ckpt["hooks"]["TeacherRecord"]["teacher"]
    assert record["sha256"] == state_dict_sha256(original) and record["path"] == str(teacher_file)
    student = load_backbone(run_dir)  # what fine-tuning, probing and convert read: the student's backbone only
    for k, v in student.state_dict().items():
        assert torch.equal(v, method.backbone.state_dict()[k]), k

    records = read_metrics(run_dir / "metrics.jsonl")
    times = [r["perf/teacher_ms/teacher"] for r in records if "perf/teacher_ms/teacher" in r]
    assert len(times) == 3 and all(t > 0 for t in times)
    shares = [r["perf/teacher_share"] for r in records if "perf/teacher_share" in r]
    assert len(shares) == 3 and all(0 < x <= 1 for x in shares)
    log = (run_dir / "log.txt").read_text()
    assert " teachers " in log and "%" in log
    assert "teacher targets.teacher:" in log and "MiB" in log and record["sha256"][:16] in log

    new_sha = state_dict_sha256(save_vmim_teacher(teacher_file, patch=4, seed=1).state_dict())  # same path, new weights
    with pytest.raises(TeacherError, match=r"targets\.teacher\.path") as err:
        pretrain(run_config(run_dir, teacher_file, epochs=2))
    assert record["sha256"] in str(err.value) and new_sha in str(err.value)
    assert load(run_dir / "checkpoints" / "last.pt")["step"] == 3  # refused before any step
    save_vmim_teacher(teacher_file, patch=4, seed=0)  # the original weights back: the resume goes on
    assert pretrain(run_config(run_dir, teacher_file, epochs=2)).step == 6


# ----------------------------------------------------------------------------------------------------
# MR-MAE: mimic on visible tokens, pixels on masked ones
# ----------------------------------------------------------------------------------------------------


class Shifted(nn.Module):
    """A target whose values at the True positions of ``where`` (B, N) are moved by ``delta``."""

    def __init__(self, inner: nn.Module, where: torch.Tensor, delta: float = 3.0):
        super().__init__()
        self.inner, self.where, self.delta = inner, where, delta

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.inner(pixels).clone()
        out[self.where] += self.delta
        return out


def test_mrmae_losses_cover_disjoint_token_sets(tmp_path):
    save_vmim_teacher(tmp_path / "dino.pt", patch=4, frames=1)
    cfg = load_config(ROOT / "configs/methods/mrmae_vit_b.yaml", [
        "model.backbone=vit_test", "model.patch_size=4", "data.img_size=16", "targets.pixel.head.depth=1",
        "targets.pixel.head.dim=32", "targets.pixel.head.heads=2", f"targets.mimic.path={tmp_path / 'dino.pt'}",
        "targets.mimic.timm_model=''", "data.datasets.digits_images.weight=1"])
    assert cfg.targets["mimic"].token_set == "visible" and cfg.targets["pixel"].token_set == "masked"
    torch.manual_seed(0)
    method = build_method(cfg)
    mask = make_mask(2, 16, 12, seed=1)  # 75 % of a 4x4 grid masked
    batch = {"clip": clip_batch(b=2, t=1, size=16, seed=7), "masks": Masks(mask)}
    with torch.no_grad():
        base = method(batch)
    originals = dict(method.targets.items())

    def losses_with(name: str, where: torch.Tensor) -> dict[str, torch.Tensor]:
        method.targets[name] = Shifted(originals[name], where)
        try:
            with torch.no_grad():
                return method(batch)
        finally:
            method.targets[name] = originals[name]

    moved = losses_with("mimic", mask)  # teacher targets at the masked tokens: the mimic loss never reads them
    torch.testing.assert_close(moved["loss/mimic"], base["loss/mimic"], atol=0, rtol=0)
    torch.testing.assert_close(moved["loss/pixel"], base["loss/pixel"], atol=0, rtol=0)
    assert not torch.isclose(losses_with("mimic", ~mask)["loss/mimic"], base["loss/mimic"])  # it reads the visible
    moved = losses_with("pixel", ~mask)  # pixel targets at the visible tokens: the pixel loss never reads them
    torch.testing.assert_close(moved["loss/pixel"], base["loss/pixel"], atol=0, rtol=0)
    assert not torch.isclose(losses_with("pixel", mask)["loss/pixel"], base["loss/pixel"])

    # the student's mimic input (the visible-only encoder) ignores the masked pixels; the teacher (global attention
    # on the full image) does not, which is why the token sets, not the pixels, keep the two losses apart
    where = mask.view(2, 1, 1, 4, 4).repeat_interleave(4, 3).repeat_interleave(4, 4)
    changed = {"clip": torch.where(where, 255 - batch["clip"], batch["clip"]), "masks": Masks(mask)}
    with torch.no_grad():
        _, before = method.predict(batch)
        _, after = method.predict(changed)
        teacher_before = method.targets["mimic"](method.normalizer.pixels(batch["clip"]))[~mask]
        teacher_after = method.targets["mimic"](method.normalizer.pixels(changed["clip"]))[~mask]
    torch.testing.assert_close(after["mimic"][2], before["mimic"][2], atol=1e-6, rtol=0)
    assert not torch.allclose(teacher_after, teacher_before, atol=1e-3)


def test_shipped_mrmae_config_builds_on_meta_without_its_teacher_file():
    cfg = load_config(ROOT / "configs/methods/mrmae_vit_b.yaml", ["data.datasets.digits_images.weight=1"])
    assert not (ROOT / cfg.targets["mimic"].path).exists()  # a placeholder: the meta build never reads it
    with torch.device("meta"):
        method = build_method(cfg)
    built = method.targets["mimic"]
    assert isinstance(built, TeacherTarget) and built.dim == 768 and built.sha256 == ""
    assert method.heads["mimic"].proj.out_features == 768 and method.token_sets["mimic"] == "visible"
    with pytest.raises(TeacherError, match=r"targets\.mimic\.path"):
        build_method(load_config(ROOT / "configs/methods/mrmae_vit_b.yaml", [
            "data.datasets.digits_images.weight=1", "model.backbone=vit_test", "targets.mimic.path=/nonexistent.pth"]))


def test_target_record_is_json_serialisable(tmp_path):
    save_vmim_teacher(tmp_path / "t.pt")
    target = build_target("teacher", load_config(None, [
        "model.backbone=vit_test", "model.patch_size=8", "data.img_size=16", "data.num_frames=4",
        "targets.t.kind=teacher", f"targets.t.path={tmp_path / 't.pt'}", "targets.t.head.dim=32",
        "targets.t.head.heads=2", "data.datasets.digits_images.weight=1"]).targets["t"], (2, 8, 8), 3)
    assert json.loads(json.dumps(target.record()))["sha256"] == target.sha256 and len(target.sha256) == 64
