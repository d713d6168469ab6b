"""``vmim eval RUN``: the multi-view test of a fine-tuned run (:mod:`vmim.engine.eval_run`)."""

from __future__ import annotations

import argparse

HELP = ("multi-view test of a fine-tuned run: eval.num_views x eval.num_crops views per video, softmax averaged, "
        "predictions file, top-1 / top-5")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="fine-tuning run directory, or a checkpoint file")
    p.add_argument("--checkpoint", help="best, last, or a file (default: best.pt if kept, else last.pt)")
    p.add_argument("--output", help="folder for <dataset>.predictions.tsv (default: <run>/eval)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config (eval.num_views=...)")


def run(args: argparse.Namespace) -> int:
    """Refusals (exit 2), too many bad files (1) and a stop signal (128 + signal: Interrupted) are one-line
    :class:`~vmim.errors.VmimError` s, printed by :func:`vmim.cli.main`."""
    from ..engine.eval_run import run_eval

    run_eval(args.target, args.checkpoint, args.overrides, args.output)
    return 0
