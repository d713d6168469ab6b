"""Checkpoints written before the EMA teacher moved from the momentum target to the method still load.

Until then the EMA copy of the student was a submodule of its target, saved as ``targets.<name>.ema.<key>``; now it is
the method's, ``ema.<name>.<key>``. The old layout is written out here literally (it is the one main at 2c28ad7
wrote: the same 94 keys, checked against a state dict saved by that code), not derived from the renaming code, and a
state dict in it must load strictly and give the EMA exactly those tensors, by itself and through a resume.
"""

from __future__ import annotations

import torch

from tests.conftest import TINY_OVERRIDES, TINY_RUN_OVERRIDES
from vmim.config import load_config
from vmim.engine.checkpoint import load, save_atomic
from vmim.engine.hooks import Hook
from vmim.engine.pretrain import PretrainTask, Trainer
from vmim.meta_arch import build_method

MOMENTUM = ["targets.momentum.dim=64", "targets.momentum.head.depth=1", "targets.momentum.head.dim=32",
            "targets.momentum.head.heads=2"]


def old_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout before: every ``ema.momentum.<key>`` as ``targets.momentum.ema.<key>``."""
    return {("targets.momentum.ema." + k[len("ema.momentum."):] if k.startswith("ema.momentum.") else k): v
            for k, v in state_dict.items()}


def test_a_state_dict_of_the_previous_layout_loads_strictly():
    cfg = load_config(None, [*TINY_OVERRIDES, *MOMENTUM])
    torch.manual_seed(0)
    saved = build_method(cfg)
    with torch.no_grad():  # an EMA unlike the student and unlike a fresh copy
        for p in saved.ema["momentum"].parameters():
            p.mul_(-0.5).add_(0.25)
    old = old_layout(saved.state_dict())
    assert len(old) == 94 and sum(k.startswith("targets.momentum.ema.") for k in old) == 28
    assert not any(k.startswith("ema.") for k in old)

    torch.manual_seed(1)  # other weights everywhere
    method = build_method(cfg)
    result = method.load_state_dict(old)  # strict: no key missing, none unexpected
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in method.ema["momentum"].state_dict().items():
        torch.testing.assert_close(value, old[f"targets.momentum.ema.{key}"], rtol=0, atol=0, msg=key)
    for key, value in method.backbone.state_dict().items():
        torch.testing.assert_close(value, old[f"backbone.{key}"], rtol=0, atol=0, msg=key)
    assert method.targets["momentum"].ema is method.ema["momentum"]  # the target reads what was loaded
    assert not torch.equal(method.ema["momentum"].patch_embed.proj.weight, method.backbone.patch_embed.proj.weight)


class EMAAtStart(Hook):
    def before_train(self, trainer) -> None:  # after the resume
        self.ema = {k: v.clone() for k, v in trainer.raw_model.ema["momentum"].state_dict().items()}


def test_a_run_checkpointed_in_the_previous_layout_resumes_with_its_ema(tmp_path):
    def cfg(epochs: int):
        return load_config(None, [*TINY_RUN_OVERRIDES, *MOMENTUM, f"output_dir={tmp_path}", "data.batch_size=4",
                                  "train.steps_per_epoch=2", f"train.epochs={epochs}", "optim.warmup_epochs=0",
                                  "targets.momentum.momentum=0.5"])

    assert Trainer(cfg(1), PretrainTask(cfg(1))).fit().step == 2
    path = tmp_path / "checkpoints" / "last.pt"
    state = load(path)
    state["model"] = old_layout(state["model"])
    save_atomic(state, path)  # as the previous code wrote it

    trainer = Trainer(cfg(2), PretrainTask(cfg(2)))
    start = EMAAtStart()
    trainer.hooks.append(start)
    assert trainer.fit().step == 4
    assert "resumed at step 2" in (tmp_path / "log.txt").read_text()
    for key, value in start.ema.items():
        torch.testing.assert_close(value, state["model"][f"targets.momentum.ema.{key}"], rtol=0, atol=0, msg=key)


def test_a_sharded_folder_of_the_previous_layout_loads_its_ema(tmp_path):
    """A DCP folder (``train.parallel: fsdp``) written before the move stores the EMA under the old names:
    :func:`vmim.engine.fsdp.load_sharded` reads those into the method's ``ema.<name>`` tensors (one process, DCP
    without a process group), and the same folder with the new names loads as before."""
    import torch.distributed.checkpoint as dcp

    from vmim.engine.fsdp import load_sharded, sharded_state

    cfg = load_config(None, [*TINY_OVERRIDES, *MOMENTUM])
    torch.manual_seed(0)
    saved = build_method(cfg)
    with torch.no_grad():
        for p in saved.ema["momentum"].parameters():
            p.mul_(-0.5).add_(0.25)
    state = sharded_state(saved, torch.optim.AdamW(saved.parameters()))
    expected = {k: v.clone() for k, v in saved.ema["momentum"].state_dict().items()}
    for layout, folder in ((old_layout, tmp_path / "old"), (lambda sd: sd, tmp_path / "new")):
        dcp.save({"model": layout(dict(state["model"])), "optimizer": state["optimizer"]}, checkpoint_id=str(folder))
        torch.manual_seed(1)
        method = build_method(cfg)
        load_sharded(method, torch.optim.AdamW(method.parameters()), str(folder), method.legacy_state_names())
        for key, value in method.ema["momentum"].state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=f"{folder.name}: {key}")
