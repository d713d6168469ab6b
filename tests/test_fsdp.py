"""``train.parallel=fsdp``: real two-process FSDP2 (gloo on CPU) against DDP, sharded checkpoints, exact resume.

Three torchrun launches of the tiny digits run (2 epochs of 4 steps, checkpoints every 3 steps): DDP, FSDP (keeping
the step 3 and 6 sharded checkpoints), and FSDP resumed from the step 3 one, which is mid-epoch (batch 3 of 4).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_OVERRIDES
from tests.test_distributed import REPO, TORCHRUN
from tests.test_pretrain_e2e import TINY, read_losses
from vmim.config import ConfigError, load_config
from vmim.engine.checkpoint import load

pytestmark = pytest.mark.slow

RUN = [*TINY, "data.batch_size=8", "train.steps_per_epoch=4", "checkpoint.every_steps=3"]
"""8 optimizer steps of 16 clips (8 per rank), drop path and gradient clipping on, fp32."""

REL_TOL = 1e-5
"""FSDP vs DDP, per-step loss: both average the same two ranks' gradients in fp32 (reduce-scatter vs all-reduce of
two addends give the same sums), but the clipping norm is summed shard by shard (it differs in the last bit), and
Adam's first steps amplify last-bit differences; measured equal to the bit on 8 steps, 1e-5 leaves room for other
collective implementations while a real difference (a missed gradient sync, one rank's update) is 1e-3 or more."""


def torchrun(run_dir: Path, *extra: str) -> None:
    cmd = [*TORCHRUN, "-m", "vmim.cli", "pretrain", "--config", str(REPO / "configs/demo/digits.yaml"),
           f"output_dir={run_dir}", *RUN, *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp")
    torchrun(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("fsdp")
    torchrun(run_dir, "train.parallel=fsdp", "checkpoint.keep_every_steps=3")
    return run_dir


def test_fsdp_matches_ddp_step_by_step_and_ends_with_a_whole_checkpoint(ddp_run, fsdp_run):
    ddp, fsdp = read_losses(ddp_run), read_losses(fsdp_run)
    assert list(fsdp) == list(range(1, 9))
    assert fsdp == pytest.approx(ddp, rel=REL_TOL)

    ckpt = fsdp_run / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["last", "last.pt", "step_00000003", "step_00000006"]
    assert {".metadata", "state.pt", "__0_0.distcp", "__1_0.distcp"} <= {p.name for p in (ckpt / "last").iterdir()}
    whole, sharded, reference = load(ckpt / "last.pt"), load(ckpt / "last"), load(ddp_run / "checkpoints/last.pt")
    assert whole["step"] == sharded["step"] == 8 and len(whole["rng"]) == 2
    for name, value in reference["model"].items():  # the gathered file is a ddp-style checkpoint of the same run
        assert torch.equal(whole["model"][name], sharded["model"][name]), name
        torch.testing.assert_close(whole["model"][name], value, rtol=REL_TOL, atol=1e-6)
    assert whole["optimizer"]["param_groups"][0]["params"] == reference["optimizer"]["param_groups"][0]["params"]

    from vmim.models.loading import read_weights

    assert read_weights(fsdp_run).state_dict.keys() == read_weights(ddp_run).state_dict.keys()  # probe/convert/init
    log = (fsdp_run / "log.txt").read_text()
    assert "sharded over 2 ranks" in log and "gathered whole" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(fsdp_run / "tb"), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("reconstruction")] == [4, 8]  # every rank ran it, rank 0 logged it


def test_fsdp_resumed_mid_epoch_repeats_the_uninterrupted_run_exactly(fsdp_run, tmp_path):
    shutil.copytree(fsdp_run / "checkpoints" / "step_00000003", tmp_path / "checkpoints" / "last")
    assert load(tmp_path / "checkpoints" / "last", sharded=True)["train_state"]["batch_in_epoch"] == 3  # mid-epoch
    torchrun(tmp_path, "train.parallel=fsdp")
    resumed, uninterrupted = read_losses(tmp_path), read_losses(fsdp_run)
    assert list(resumed) == list(range(4, 9))
    assert resumed == {step: uninterrupted[step] for step in resumed}  # exact: same shards, RNG and data position
    assert "resumed at step 3 (epoch 0, batch 3)" in (tmp_path / "log.txt").read_text()


def test_a_sharded_checkpoint_is_read_for_init_and_probe(fsdp_run, tmp_path):
    """A running or preempted fsdp run has only sharded folders (``last/``, ``step_*/``): ``init=``, ``vmim probe``
    and ``vmim convert`` read them whole on one process, the newest first, as the trainer resumes."""
    import sys

    from vmim.models.loading import read_weights

    ckpt = fsdp_run / "checkpoints"
    gathered, folder = read_weights(ckpt / "last.pt"), read_weights(ckpt / "last")  # step 8: two writers, one model
    assert gathered.state_dict.keys() == folder.state_dict.keys()
    for name, value in gathered.state_dict.items():
        assert torch.equal(folder.state_dict[name], value), name
    run = tmp_path / "run"  # as a preempted run at step 3: its config and a sharded last/, nothing else
    shutil.copytree(ckpt / "step_00000003", run / "checkpoints" / "last")
    shutil.copyfile(fsdp_run / "config.yaml", run / "config.yaml")
    step3 = read_weights(run)
    assert "step 3" in step3.origin
    assert any(not torch.equal(step3.state_dict[k], v) for k, v in gathered.state_dict.items())  # not step 8's
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", "probe", str(run), "probe.labels_per_class=[0]",
                           "probe.methods=[linear]", "probe.baselines=[]", "data.num_workers=0"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"probe of {run / 'checkpoints' / 'last'} (pretrain, step 3)"), first
    assert (run / "probe" / "results.json").is_file()


def test_parallel_typo_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.parallel.*'fdsp'.*did you mean 'fsdp'"):
        load_config(None, [*TINY_OVERRIDES, "train.parallel=fdsp"])


def test_fsdp_refuses_fp16_and_fine_tuning_before_any_work():
    with pytest.raises(ConfigError, match=r"train\.parallel.*train\.precision=fp16"):
        load_config(None, [*TINY_OVERRIDES, "train.parallel=fsdp", "train.precision=fp16"])
    with pytest.raises(ConfigError, match=r"train\.parallel.*finetune"):
        load_config(REPO / "configs/demo/motion_finetune.yaml", ["train.parallel=fsdp"], task="finetune")


def test_every_transformer_block_is_a_shard_unit():
    from vmim.engine.fsdp import block_modules
    from vmim.meta_arch import build_method

    method = build_method(load_config(None, TINY_OVERRIDES))
    blocks = block_modules(method)
    assert blocks == [*method.backbone.blocks, *method.heads["pixel"].blocks]  # 2 encoder + 1 decoder block


def fake_sharded(path: Path, step: int) -> None:
    path.mkdir(parents=True)
    (path / ".metadata").write_bytes(b"")
    torch.save({"step": step}, path / "state.pt")


def test_manager_finds_sharded_folders_and_skips_unfinished_ones(tmp_path):
    import os

    from vmim.engine.checkpoint import CheckpointManager

    ckpt = tmp_path / "checkpoints"
    fake_sharded(ckpt / "step_00000004", 4)
    fake_sharded(ckpt / "last.old", 6)  # a crash between the two renames of a save: last/ is missing
    (ckpt / "last.tmp").mkdir()  # an unfinished save
    (ckpt / "step_00000008.tmp").mkdir()
    manager = CheckpointManager(tmp_path)
    assert [p.name for p in manager.candidates()] == ["last.old", "step_00000004"]
    assert manager.load_latest(sharded=True) == {"step": 6, "sharded": str(ckpt / "last.old")}
    torch.save({"step": 7}, ckpt / "last.pt")
    os.utime(ckpt / "last.old" / "state.pt", (1, 1))  # older than last.pt: the newest of the two goes first
    assert [p.name for p in manager.candidates()][:2] == ["last.pt", "last.old"]
