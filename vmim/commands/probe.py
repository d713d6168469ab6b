"""``vmim probe RUN_DIR`` or ``vmim probe --config FILE``: classifiers on frozen features (:mod:`vmim.engine.probe`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import load_config
from ..preflight import check_data_paths

HELP = "linear / k-NN probes on frozen features: weights vs random init"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a pretraining run: probe on the built-in digits")
    p.add_argument("--config", help="fine-tuning config: fit on data.datasets, score on eval.datasets, weights = init")
    p.add_argument("--checkpoint", help="with RUN_DIR: checkpoint file (default: the run's newest)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the probe config")


def run(args: argparse.Namespace) -> int:
    """Bad files and stop signals as ``vmim eval`` (:mod:`vmim.engine.probe`)."""
    if args.config:  # argparse hands the first override to the optional RUN_DIR
        overrides = ([args.run_dir] if args.run_dir else []) + list(args.overrides)
        cfg = load_config(args.config, overrides, task="finetune")
        check_data_paths(cfg)
        what = f"init {cfg.init or '(random)'}"
    else:
        if not args.run_dir:
            print("vmim probe: give a pretraining RUN_DIR or --config FILE", file=sys.stderr)
            return 2
        run_dir = Path(args.run_dir)
        if not (run_dir / "config.yaml").is_file():
            print(f"vmim probe: {run_dir} is not a run directory (no config.yaml); give a pretraining run's folder "
                  "or --config FILE", file=sys.stderr)
            return 2
        run_cfg = load_config(run_dir / "config.yaml", task="pretrain")
        from ..engine.checkpoint import CheckpointManager
        from ..engine.probe import probe_config_for_pretraining_run

        init = args.checkpoint or str(CheckpointManager(run_dir).last)
        if not Path(init).exists():
            print(f"vmim probe: no checkpoint in {run_dir / 'checkpoints'}", file=sys.stderr)
            return 2
        cfg = probe_config_for_pretraining_run(run_cfg, init, args.overrides)
        what = f"held-out digits, {init}"
    from ..engine.probe import probe

    result = probe(cfg)
    print(f"probe on {', '.join(cfg.eval.datasets)} ({what}):")
    for line in result.lines(cfg.probe.labels_per_class):
        print(line)
    return 0
