"""Command line: ``vmim pretrain --config FILE [key=value ...]``, ``vmim submit``, ``vmim probe RUN_DIR``,
``vmim list``.

The config is loaded and validated before torch is imported, so a typo fails in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import ConfigError, config_to_yaml, load_config
from .preflight import check_data_paths


def _pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    check_data_paths(cfg)  # a missing list / folder stops here, naming its key: before torch and the run folder
    import signal

    from .engine.pretrain import StopRequested, pretrain

    try:
        pretrain(cfg)
    except StopRequested as stop:
        print(f"vmim: {stop}", file=sys.stderr)
        return 128 + signal.Signals[stop.signal_name].value if stop.signal_name in signal.Signals.__members__ else 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .launch.cluster import ClusterConfig, load_cluster

    flags = {f.name: getattr(args, f.name) for f in fields(ClusterConfig) if hasattr(args, f.name)}
    if args.local:
        flags["executor"] = "local"
    cluster = load_cluster(args.profile, flags)
    from .launch.submit import submit

    submitted = submit(args.config, args.overrides, cluster, args.sweep or [])
    for job, cfg in submitted:
        print(f"submitted job {job.job_id} ({cluster.executor}): run dir {cfg.output_dir}", flush=True)
    if not args.wait:
        return 0
    failed = 0
    for job, _ in submitted:
        try:
            result = job.results()[0]  # one result per task; rank 0's
            print(f"job {job.job_id} finished: {result}")
        except Exception as err:  # submitit re-raises the job's failure
            print(f"job {job.job_id} failed: {err}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


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


def _list(args: argparse.Namespace) -> int:
    """Every registry: the names a config may use."""
    from .registries import describe_registries

    print(describe_registries(with_params=not args.no_params))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmim", description="Masked video-and-image pretraining.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pretrain (or resume) a run")
    p.add_argument("--config", required=True, help="YAML config (may use _base_)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, ~key.sub deletes")
    p.set_defaults(func=_pretrain)
    p = sub.add_parser("submit", help="submit pretraining to Slurm (or run it as local processes) via submitit")
    p.add_argument("--config", required=True, help="YAML config, as for pretrain")
    p.add_argument("--profile", help="cluster profile YAML with defaults for the options below (see slurm/)")
    p.add_argument("--local", action="store_true", help="run as local processes (same as --executor local)")
    p.add_argument("--executor", choices=("slurm", "local", "debug"))
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--tasks-per-node", type=int, help="default: one per GPU, or 1")
    p.add_argument("--cpus-per-task", type=int)
    p.add_argument("--mem-gb", type=float)
    p.add_argument("--time-min", "--time", type=int, dest="time_min", help="time limit in minutes")
    p.add_argument("--exclusive", action="store_const", const=True)
    p.add_argument("--signal-delay-s", type=int, help="SIGUSR2 this long before the time limit")
    p.add_argument("--max-requeues", type=int)
    p.add_argument("--sbatch", action="append", help="extra sbatch option 'key=value' (repeatable)")
    p.add_argument("--setup", action="append", help="shell line run before the job (repeatable)")
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2", help="one job array over the crossed values")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and report their results")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, as for pretrain")
    p.set_defaults(func=_submit)
    p = sub.add_parser("probe", help="linear probe on held-out digits: checkpoint vs random init")
    p.add_argument("run_dir")
    p.add_argument("--checkpoint", help="checkpoint file (default: the run's newest)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the run's config")
    p.set_defaults(func=_probe)
    p = sub.add_parser("list", help="print every registry: backbones (with parameter counts), maskings, targets, "
                                    "heads, "
                                    "losses, token sets, dataset kinds, index formats, decoders")
    p.add_argument("--no-params", action="store_true", help="skip the parameter counts (no torch import)")
    p.set_defaults(func=_list)
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
