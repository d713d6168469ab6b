"""Run directories written by the previous main (before the issue-20 reshaping) still work with this code.

``tests/data/previous_main/`` holds two tiny runs that the code of commit 2c28ad7 wrote
(``tests/data/previous_main/generate.py``, run with that commit on ``PYTHONPATH``): a pretraining run with a pixel and a
momentum target (its checkpoint stores the EMA copy under the old ``targets.momentum.ema.*`` keys) and a fine-tuning
run initialised from it, plus the per-video predictions that commit's ``vmim eval`` wrote for the fine-tuning run.
Those predictions are the known answer: the same checkpoint through today's code must score every video alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.cli_harness import run_cli

DATA = Path(__file__).resolve().parent / "data" / "previous_main"


def _copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(DATA / name, dst)
    return dst


def test_previous_main_configs_load_unchanged():
    from vmim.config import load_config

    pre = load_config(DATA / "pretrain_run" / "config.yaml", task="pretrain")
    ft = load_config(DATA / "finetune_run" / "config.yaml", task="finetune")
    assert pre.targets["momentum"].kind == "momentum" and pre.model.backbone == "vit_test"
    assert ft.head.num_classes in (0, 4) and ft.model.fc_norm is True


def test_eval_of_a_previous_main_finetune_run_scores_every_video_as_it_did(tmp_path):
    run = _copy("finetune_run", tmp_path)
    proc = run_cli("eval", run, "eval.num_views=1", "eval.num_crops=1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = (run / "eval" / "motion_test.predictions.tsv").read_text().splitlines()
    expected = (DATA / "finetune_run_eval_predictions.tsv").read_text().splitlines()
    assert len(written) == len(expected) == 360
    assert written == expected


def test_previous_main_momentum_checkpoint_loads_into_the_method_with_its_ema(tmp_path):
    from vmim.config import load_config
    from vmim.meta_arch import build_method

    cfg = load_config(DATA / "pretrain_run" / "config.yaml", task="pretrain")
    state = torch.load(DATA / "pretrain_run" / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    old = {k: v for k, v in state["model"].items() if k.startswith("targets.momentum.ema.")}
    assert old, "the fixture stores the EMA under the old key layout"
    method = build_method(cfg)
    method.load_state_dict(state["model"], strict=True)
    now = method.state_dict()
    for key, value in old.items():
        assert torch.equal(now[key.replace("targets.momentum.ema.", "ema.momentum.")], value), key


def test_pretraining_resumes_from_a_previous_main_checkpoint(tmp_path):
    run = _copy("pretrain_run", tmp_path)
    proc = run_cli("pretrain", "--config", run / "config.yaml", f"output_dir={run}", "train.epochs=2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resum" in (proc.stdout + proc.stderr).lower()
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")
    assert state["step"] == 4


def test_probe_of_a_previous_main_pretraining_run(tmp_path):
    run = _copy("pretrain_run", tmp_path)
    proc = run_cli("probe", run, "probe.compare_random_init=false", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "all labels: " in proc.stdout and (run / "probe" / "results.json").is_file()
