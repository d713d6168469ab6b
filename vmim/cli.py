"""Command line: ``vmim pretrain --config FILE [key=value ...]`` and ``vmim probe RUN_DIR``.

The config is loaded and validated before torch is imported, so a typo fails in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, config_to_yaml, load_config


def _pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from .engine.pretrain import pretrain

    pretrain(cfg)
    return 0


def _probe(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    from .engine.checkpoint import CheckpointManager, load
    from .engine.probe import probe_checkpoint

    state = load(args.checkpoint) if args.checkpoint else CheckpointManager(run_dir).load_latest()
    if state is None:
        print(f"vmim probe: no checkpoint in {run_dir / 'checkpoints'}", file=sys.stderr)
        return 2
    acc = probe_checkpoint(cfg, state)
    print(f"linear probe on held-out digits (step {state['step']}): "
          f"pretrained {acc['pretrained']:.1%} | random init {acc['random_init']:.1%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmim", description="Masked video-and-image pretraining.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain (or resume) a run")
    p.add_argument("--config", required=True, help="YAML config (may use _base_)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, ~key.sub deletes")
    p.set_defaults(func=_pretrain)
    p = sub.add_parser("probe", help="linear probe on held-out digits: checkpoint vs random init")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config")
    p.set_defaults(func=_probe)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"vmim: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        known = ("TooManyBadFiles", "NonFiniteLossError", "FileNotFoundError", "IndexFormatError")
        if type(err).__name__ not in known:
            raise
        print(f"vmim: {type(err).__name__}: {err}", file=sys.stderr)  # the run's own words; no traceback needed
        return 1


if __name__ == "__main__":
    sys.exit(main())
