#!/usr/bin/env python
"""The small-data check of docs/small-data.md: with 10 % of the labels, does fine-tuning from a pretraining run beat
that run's own linear probe and a linear probe on the raw pixels? Three numbers per seed, and their mean ± std.

For each seed ``s`` (the label subset and the training seed: ``data.datasets.<name>.subset_seed=s``,
``train.seed=s``), with the vmim CLI only:

* ``vmim finetune --config CONFIG init=INIT`` (and ``init=`` with ``--scratch``), then ``vmim eval RUN``: the test
  accuracy of the checkpoint ``vmim eval`` picks by its rule (``best.pt`` chosen on a validation split where the
  recipe carves one, else ``last.pt``; never a test-selected one);
* ``vmim probe --config CONFIG init=INIT probe.labels_per_class=[0] probe.methods=[linear]``: with ``--config`` the
  probe fits on exactly the samples that fine-tune trained on (after the validation carve and the subset), so the
  pretrained encoder's linear probe, the random-init one and the raw-pixel one see the fine-tune's own labels.

Tasks (the pretraining runs come from the Makefile: ``make demo`` and ``make demo-video``):

* ``digits``: ``configs/demo/digits_finetune.yaml`` from ``runs/demo`` (143 labelled digit images, last checkpoint
  of a fixed schedule);
* ``motion``: ``configs/demo/motion_finetune.yaml`` with ``eval.val_fraction=0.1`` (as ``make demo-video``) from
  ``runs/demo_video/pretrain`` (129 labelled motion clips; best.pt on the 144 carved out for validation).

    python tools/small_data_figures.py digits [--init runs/demo] [--seeds 0 1 2] [--jobs 2] [--scratch] [--json]
    python tools/small_data_figures.py digits --show      # the table of the last run, from its figures.json

``--jobs N`` runs N seeds at once, each with ``cores / N`` threads (two single-thread runs of the demos' tiny ViT
use 2 cores better than one run with two threads). Writes ``OUT/figures.json`` and prints a table (``--json``: the
object).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TASKS: dict[str, dict] = {
    "digits": {"config": "configs/demo/digits_finetune.yaml", "dataset": "digits", "init": "runs/demo",
               "overrides": []},
    "motion": {"config": "configs/demo/motion_finetune.yaml", "dataset": "motion", "init": "runs/demo_video/pretrain",
               "overrides": ["eval.val_fraction=0.1"]},
}
"""task -> fine-tuning config, its training dataset's key, the default pretraining run, the Makefile's overrides."""

PERCENT = re.compile(r"top1 ([0-9.]+)%")
COLUMNS = ("finetune", "scratch", "pretrained", "random_init", "raw_pixels")
TITLES = {"finetune": "fine-tune", "scratch": "scratch FT", "pretrained": "linear probe", "random_init": "random init",
          "raw_pixels": "raw pixels"}


def vmim(args: list[str], threads: int) -> str:
    """Run the vmim CLI with ``threads`` intra-op threads; its stdout (an error with its stderr when it fails)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"vmim {' '.join(args[:3])} ... failed ({proc.returncode})")
    return proc.stdout


def finetune_accuracy(task: dict, init: str, folder: Path, extra: list[str], threads: int) -> tuple[float, str]:
    """(test top-1 %, vmim eval's first line: which checkpoint and why) of one fine-tune."""
    shutil.rmtree(folder, ignore_errors=True)
    vmim(["finetune", "--config", task["config"], f"init={init}", f"output_dir={folder}", *extra], threads)
    lines = vmim(["eval", str(folder)], threads).strip().splitlines()
    return float(PERCENT.findall(lines[-1])[0]), lines[0]


def run_seed(task: dict, init: str, out: Path, seed: int, scratch: bool, threads: int) -> dict:
    """Every column of one seed, in %."""
    extra = [*task["overrides"], f"train.seed={seed}", f"data.datasets.{task['dataset']}.subset_seed={seed}"]
    row: dict = {"seed": seed}
    start = time.time()
    row["finetune"], row["checkpoint"] = finetune_accuracy(task, init, out / f"finetune_s{seed}", extra, threads)
    if scratch:
        row["scratch"], _ = finetune_accuracy(task, "", out / f"scratch_s{seed}", extra, threads)
    probe_dir = out / f"probe_s{seed}"
    vmim(["probe", "--config", task["config"], f"init={init}", *extra,
          "probe.labels_per_class=[0]", "probe.methods=[linear]", "--output", str(probe_dir)], threads)
    results = json.loads((probe_dir / "results.json").read_text())
    row.update({r["features"]: 100 * r["mean"] for r in results["results"]})
    row["fit_samples"] = results["data"]["fit"]["samples"]
    row["test_samples"] = results["data"]["test"]["samples"]
    row["minutes"] = round((time.time() - start) / 60, 1)
    return row


def summary(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """column -> (mean, sample std) over the seeds."""
    out = {}
    for column in COLUMNS:
        values = [r[column] for r in rows if column in r]
        if values:
            out[column] = (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
    return out


def print_table(result: dict) -> None:
    rows, stats = result["rows"], {k: (v["mean"], v["std"]) for k, v in result["summary"].items()}
    columns = [c for c in COLUMNS if c in stats]
    print(f"{result['task']}: {result['config']} from {result['init']}; {rows[0]['fit_samples']} labelled, "
          f"{rows[0]['test_samples']} test samples; test top-1 %")
    print(f"  {'seed':<6}" + "".join(f"{TITLES[c]:>14}" for c in columns))
    for r in rows:
        print(f"  {r['seed']:<6}" + "".join(f"{r[c]:>14.2f}" for c in columns))
    print(f"  {'mean':<6}" + "".join(f"{stats[c][0]:>7.2f} ± {stats[c][1]:<4.2f}" for c in columns))
    print(f"  fine-tune checkpoint (seed {rows[0]['seed']}): {rows[0]['checkpoint']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--init", help="the pretraining run (default: the task's demo run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    parser.add_argument("--scratch", action="store_true", help="also fine-tune from scratch")
    parser.add_argument("--out", help="folder of the runs and figures.json (default: runs/small_data_<task>)")
    parser.add_argument("--json", action="store_true", help="print figures.json instead of the table")
    parser.add_argument("--show", action="store_true", help="print the figures of an earlier run of --out, no work")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    out = Path(args.out or f"runs/small_data_{args.task}").resolve()
    if args.show:
        result = json.loads((out / "figures.json").read_text())
    else:
        init = str(Path(args.init or task["init"]).resolve())
        if not Path(init).exists():
            raise SystemExit(f"--init {init}: no such run (make demo / make demo-video build the default ones)")
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(lambda s: run_seed(task, init, out, s, args.scratch, threads), args.seeds))
        result = {"task": args.task, "config": task["config"], "init": init, "overrides": task["overrides"],
                  "rows": rows, "summary": {k: {"mean": m, "std": s} for k, (m, s) in summary(rows).items()}}
        (out / "figures.json").write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
