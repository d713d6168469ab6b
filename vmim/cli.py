"""Command line: one verb per training task of the TASKS table (``vmim pretrain``, ``vmim finetune``), and ``vmim
eval``, ``vmim probe``, ``vmim convert``, ``vmim submit``, ``vmim list``.

The config is loaded and validated before torch is imported, so a typo fails in well under a second.
"""

from __future__ import annotations

import argparse
import functools
import sys

from .commands import eval as eval_command
from .commands import probe as probe_command
from .config import TASKS, ConfigError, config_to_yaml, load_config
from .errors import VmimError
from .preflight import check_data_paths, check_output_dir


def _train(args: argparse.Namespace, task: str) -> int:
    """``vmim pretrain`` / ``vmim finetune``: validate, check paths, train (or resume)."""
    cfg = load_config(args.config, args.overrides, task=task)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    check_output_dir(cfg.output_dir)  # a run folder that cannot be made stops here, naming output_dir
    check_data_paths(cfg)  # so does a missing or malformed list / folder, naming its key: before the run folder
    import signal

    from .engine.trainer import StopRequested

    run = TASKS[task].run_fn()

    try:
        run(cfg)
    except StopRequested as stop:
        print(f"vmim: {stop}", file=sys.stderr)
        return 128 + signal.Signals[stop.signal_name].value if stop.signal_name in signal.Signals.__members__ else 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from .launch.cluster import ClusterConfig, check_submission, load_cluster

    flags = {f.name: getattr(args, f.name) for f in fields(ClusterConfig) if hasattr(args, f.name)}
    if args.local:
        flags["executor"] = "local"
    cluster = load_cluster(args.profile, flags)
    if args.config and not args.eval:  # before anything is queued or written: the config, and it with the cluster
        check_submission(load_config(args.config, args.overrides), cluster)
    if args.test and not args.eval:
        raise ConfigError("--test", "goes with --eval RUN_DIR (the data to score instead of the run's eval.datasets)")
    tests = None
    if args.test:  # read here, before anything is queued: a bad word stops at once, naming --test
        from .commands.eval import entries_for

        tests = entries_for(args.test)
    from .launch.submit import submit

    if args.eval:
        from .launch.submit import submit_eval

        submitted = submit_eval(args.eval, args.checkpoint, args.overrides, cluster, test_datasets=tests)
        print(f"submitted job {submitted[0][0].job_id} ({cluster.executor}): eval of {args.eval}", flush=True)
    else:
        if not args.config:
            print("vmim submit: give --config FILE (training) or --eval RUN_DIR", file=sys.stderr)
            return 2
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


def _convert(args: argparse.Namespace) -> int:
    """``vmim convert --from FORMAT SRC DST``: a reference checkpoint -> a vmim backbone file. An unsafe, empty or
    random source is refused before torch is imported (:func:`vmim.safe_load.peek`)."""
    from .safe_load import peek

    try:
        peek(args.src, extra_globals=("argparse.Namespace",))  # VideoMAE / MAE pickle their args
    except (ValueError, OSError) as err:  # InputError, UnsafeFileError, FileNotFoundError
        print(f"vmim convert: {err}", file=sys.stderr)
        return 2
    from .convert.cli import convert_command

    return convert_command(args)


def _list(args: argparse.Namespace) -> int:
    """Every registry: the names a config may use."""
    from .registries import describe_registries

    print(describe_registries(with_params=not args.no_params))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmim", description="Masked video-and-image pretraining.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, task in TASKS.items():  # one verb per training task of the TASKS table
        p = sub.add_parser(name, help=f"{task.summary}: a config with task: {name}")
        p.add_argument("--config", required=True, help=f"YAML config (task: {name}; may use _base_)")
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("overrides", nargs="*", help="key.sub=value overrides, ~key.sub deletes")
        p.set_defaults(func=functools.partial(_train, task=name))
    p = sub.add_parser("eval", help=eval_command.HELP)
    eval_command.add_arguments(p)
    p.set_defaults(func=eval_command.run)
    p = sub.add_parser("submit", help="submit pretraining or fine-tuning (the config's task) to Slurm, or run it as "
                                      "local processes, via submitit")
    p.add_argument("--config", help="YAML config, as for pretrain / finetune")
    p.add_argument("--eval", metavar="RUN_DIR", help="instead of training: vmim eval of this fine-tuned run")
    p.add_argument("--checkpoint", help="with --eval: best, last or a file")
    p.add_argument("--test", action="append", metavar="LIST",
                   help="with --eval: score this data instead of the run's eval.datasets (repeatable; a list file, an "
                        "image folder or KIND:SPLIT, as vmim eval --test)")
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
    p = sub.add_parser("probe", help=probe_command.HELP)
    probe_command.add_arguments(p)
    p.set_defaults(func=probe_command.run)
    p = sub.add_parser("convert", help="import a reference checkpoint (VideoMAE, MAE, MVD, timm ViT, SlowFast "
                                       "MViTv2) as a vmim backbone file, for init= and vmim.models.load_backbone")
    from .convert.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=_convert)
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
    except VmimError as err:  # ConfigError and every other one-line error: the run's own words, no traceback
        print(f"vmim: {err}", file=sys.stderr)
        return err.exit_code
    except FileNotFoundError as err:  # a path named on the command line (not a config key: those are ConfigErrors)
        print(f"vmim: FileNotFoundError: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
