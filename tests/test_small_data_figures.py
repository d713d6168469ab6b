"""tools/small_data_figures.py (the fine-tune vs linear-probe vs raw-pixel figures of docs/small-data.md): every
command it would run is valid for each task (the configs with the seed's and the probe's overrides load, and the
seed reaches the labelled subset), and its summary is the seeds' mean and sample std (the tool itself takes CPU
tens of minutes per task and is run by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import small_data_figures  # noqa: E402
from vmim.config import load_config  # noqa: E402
from vmim.config.probe import validate_probe  # noqa: E402


@pytest.mark.parametrize("name", sorted(small_data_figures.TASKS))
def test_each_task_s_commands_load_with_the_seed_in_the_subset(name):
    task = small_data_figures.TASKS[name]
    seed = ["train.seed=2", f"data.datasets.{task['dataset']}.subset_seed=2"]
    cfg = load_config(REPO / task["config"], [*task["overrides"], *seed], task="finetune")
    subset = cfg.data.datasets[task["dataset"]]
    assert 0 < subset.fraction < 1 and subset.subset_seed == 2 and cfg.train.seed == 2
    probe = load_config(REPO / task["config"], [*task["overrides"], *seed, "probe.labels_per_class=[0]",
                                                 "probe.methods=[linear]"], task="finetune")
    validate_probe(probe.probe)
    assert probe.probe.labels_per_class == [0] and "raw_pixels" in probe.probe.baselines
    assert (cfg.eval.val_fraction > 0) == (name == "motion")  # as make demo-video; the digits recipe has none


def test_summary_is_the_mean_and_sample_std_and_the_table_shows_every_column(capsys):
    rows = [{"seed": s, "finetune": f, "pretrained": p, "raw_pixels": r, "fit_samples": 143, "test_samples": 359,
             "checkpoint": "checkpoint x: step 1, epoch 1; the last checkpoint"}
            for s, f, p, r in ((0, 90.0, 80.0, 91.0), (1, 92.0, 81.0, 90.0), (2, 94.0, 79.0, 92.0))]
    stats = small_data_figures.summary(rows)
    assert stats["finetune"] == pytest.approx((92.0, 2.0))  # sqrt(((-2)^2 + 0 + 2^2) / 2)
    assert stats["pretrained"] == pytest.approx((80.0, 1.0)) and stats["raw_pixels"] == pytest.approx((91.0, 1.0))
    assert "scratch" not in stats
    small_data_figures.print_table({"task": "digits", "config": "c.yaml", "init": "runs/demo", "rows": rows,
                                    "summary": {k: {"mean": m, "std": s} for k, (m, s) in stats.items()}})
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["seed", "fine-tune", "linear", "probe", "raw", "pixels"]
    assert lines[-2].split() == ["mean", "92.00", "±", "2.00", "80.00", "±", "1.00", "91.00", "±", "1.00"]
