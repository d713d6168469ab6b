"""``vmim probe RUN [--train DATA --test DATA]`` or ``vmim probe --config FILE``: classifiers on frozen features
beside the random-init and raw-pixel baselines, at several label budgets (:mod:`vmim.engine.probe`,
docs/probes.md).

* ``RUN``: a pretraining run (its encoder) or a fine-tuning run (its backbone), the model and input statistics from
  its ``config.yaml``, the weights from ``--checkpoint`` (default: the newest of ``checkpoints/last.pt`` and a
  sharded run's ``checkpoints/last/``; never a ``best.pt`` unless asked, since that one may have been picked on a
  test set). ``--train`` / ``--test`` name the
  data in one word each (:func:`vmim.data.list_entry.entry_for`: a list file, an image folder or ``KIND:SPLIT``);
  without them, the built-in digits' train and test images. Results in ``RUN/probe``.
* ``--config FILE``: a fine-tuning config: fit on ``data.datasets``, score on ``eval.datasets``, weights = ``init``.
  Results in ``<output_dir>/probe``.

Every refusal comes before any work (exit 2, one line naming the flag, key or file); ``--output`` puts the results
elsewhere.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..config import ConfigError, load_config
from ..preflight import check_data_paths, check_dataset_paths
from . import accept_intermixed

HELP = ("linear / k-NN / attentive probes on frozen features at several label budgets, beside the random init and "
        "the raw pixels; results in RUN/probe")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", nargs="?", help="a pretraining or fine-tuning run: probe its backbone")
    p.add_argument("--config", help="fine-tuning config: fit on data.datasets, score on eval.datasets, weights = init")
    p.add_argument("--checkpoint", help="with RUN: last, best, or a checkpoint file or sharded folder (default: the "
                                        "newest of checkpoints/last.pt and last/)")
    p.add_argument("--train", help="with RUN: the data to fit on: a list file, an image folder, or KIND:SPLIT "
                                   "(digits_motion:train)")
    p.add_argument("--test", help="with RUN: the data to score on (as --train)")
    p.add_argument("--output", help="folder for results.json and results.tsv (default: RUN/probe, or the config's "
                                    "output_dir/probe)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the probe config (probe.methods=[linear])")
    accept_intermixed(p)


def run(args: argparse.Namespace) -> int:
    """Bad files and stop signals as ``vmim eval`` (:mod:`vmim.engine.probe`)."""
    command = "vmim probe " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["probe"] else ""
    side_names = None
    if args.config:  # argparse hands the first override to the optional RUN_DIR
        for flag in ("train", "test", "checkpoint"):
            if getattr(args, flag):
                raise ConfigError(f"--{flag}", "goes with RUN (a run's model); with --config the data is "
                                               "data.datasets / eval.datasets and the weights init")
        overrides = ([args.run_dir] if args.run_dir else []) + list(args.overrides)
        cfg = load_config(args.config, overrides, task="finetune")
        check_data_paths(cfg)
        out = Path(args.output) if args.output else Path(cfg.output_dir) / "probe"
    else:
        if not args.run_dir:
            print("vmim probe: give a pretraining or fine-tuning RUN_DIR, or --config FILE", file=sys.stderr)
            return 2
        run_dir = Path(args.run_dir)
        if not (run_dir / "config.yaml").is_file():
            print(f"vmim probe: {run_dir} is not a run directory (no config.yaml); give a pretraining or fine-tuning "
                  "run's folder, or --config FILE", file=sys.stderr)
            return 2
        if bool(args.train) != bool(args.test):
            given, missing = ("--train", "--test") if args.train else ("--test", "--train")
            raise ConfigError(missing, f"{given} needs {missing} too (the data to "
                                       f"{'score' if missing == '--test' else 'fit'} on)")
        from ..data.list_entry import entry_for

        entries = (entry_for(args.train, "--train"), entry_for(args.test, "--test")) if args.train else (None, None)
        run_cfg = load_config(run_dir / "config.yaml")  # its task picks the schema: pretrain or finetune
        init = _checkpoint(run_dir, args.checkpoint)
        if init is None:
            return 2
        from ..config.probe_run import probe_config_for_run

        cfg = probe_config_for_run(run_cfg, str(init), *entries, overrides=args.overrides)
        if args.train:
            side_names = {"data.datasets": "--train", "eval.datasets": "--test"}
            _check_list("--train", cfg.data.datasets["train"])
            _check_list("--test", cfg.eval.datasets["test"])
        out = Path(args.output) if args.output else run_dir / "probe"
    from ..engine.probe import probe

    probe(cfg, out, side_names, command)
    return 0


def _check_list(flag: str, ds) -> None:
    """The paths and lines of the entry ``flag`` gave (:func:`vmim.preflight.check_dataset_paths`: every line holds
    an integer label), refused under the flag's name (``--train``, not ``--train.path``)."""
    try:
        check_dataset_paths(flag, ds, 0, True)
    except ConfigError as err:
        if err.key == flag or not err.key.startswith(flag + "."):
            raise
        raise ConfigError(flag, str(err).split(": ", 1)[1]) from None


def _checkpoint(run_dir: Path, choice: str | None) -> Path | None:
    """The checkpoint of ``RUN`` for ``--checkpoint``, or None after saying why there is none: by default (or
    ``last``) the newest of ``last.pt`` / ``last/`` (a sharded run's folder; by default the kept ``step_*`` too when
    there is no last), ``best`` = ``best.pt``, else the file or sharded folder named
    (:mod:`vmim.checkpoint_files`)."""
    from ..checkpoint_files import candidates, is_sharded_checkpoint

    folder = run_dir / "checkpoints"
    if choice in (None, "last"):
        found = [p for p in candidates(folder) if choice is None or p.name.startswith("last")]
        if not found:
            print(f"vmim probe: no checkpoint in {folder} (no last.pt or sharded last/"
                  f"{'' if choice else ', no step_*.pt or step_*/'})", file=sys.stderr)
            return None
        return found[0]
    path = folder / "best.pt" if choice == "best" else Path(choice)
    if not (path.is_file() or is_sharded_checkpoint(path)):
        what = "" if not path.exists() else " (a folder, but not a sharded checkpoint: no .metadata or state.pt)"
        print(f"vmim probe: no checkpoint {path}{what}", file=sys.stderr)
        return None
    return path
