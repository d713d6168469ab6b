"""``vmim eval``: the multi-view test of a fine-tuned run, on one process or sharded over ``torchrun`` ranks.

The target is a fine-tuning run directory (its ``checkpoints/best.pt``, else ``last.pt``) or a checkpoint file (which
carries its resolved config). Every ``eval.datasets`` entry is scored with ``eval.num_views`` x ``eval.num_crops``
views; rank 0 writes ``<run>/eval/<name>.predictions.tsv`` and prints, per dataset, one line per bad file (if any)
and ``top1 X% top5 Y% (N videos, K x C views)`` last.

Decisions (issue 19: every verb treats bad input, bad data and stop signals as training does):

* **Refused before any work**, as ``vmim finetune`` refuses its lists: every ``eval.datasets`` entry's paths
  (:func:`vmim.preflight.check_dataset_paths`: a missing list or folder names its key), its list's format (a
  malformed or non-integer label line names the key, the file and the line) and its labels against the
  checkpoint's head (:func:`vmim.data.labels.check_labels`: key, file, line), all :class:`~vmim.config.ConfigError`
  (exit 2) before the model meets a video or the ``eval`` folder exists. Only the eval entries are checked: the
  training lists of the run need not be on the machine that evaluates it.
* **Bad files** are misses (:mod:`vmim.engine.evaluate`), and per dataset a
  :class:`~vmim.data.bad_files.BadFileMonitor` prints one stdout line per file (rank 0) and stops the command with
  TooManyBadFiles (exit 1) past ``data.max_bad_fraction``; that dataset's predictions are then not written.
  Decoding is isolated as in training (``data.decode_isolation``, ``data.decode_timeout_s``).
* **Stop signals**: SIGTERM / SIGUSR2 during set-up stop at once; during a pass, after the current batch on every
  rank (:func:`vmim.engine.evaluate.evaluate`). Either way :class:`~vmim.engine.preemption.Interrupted`: one line, exit
  128 + the signal, and no predictions file for the dataset being scored (those finished before are kept; a file
  is only ever renamed into place whole).
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from ..config import ConfigError, apply_overrides, build_config, load_config
from ..errors import InputError
from .checkpoint import load


class EvalTargetError(InputError):
    """What ``vmim eval`` was pointed at is not a fine-tuned run or checkpoint (said in one line, no traceback)."""


def resolve_target(target: str | Path, checkpoint: str | None = None) -> tuple[Path, Path | None]:
    """(checkpoint file, config file or None = the checkpoint's own) of a run directory or a checkpoint file."""
    target = Path(target)
    if target.is_dir():
        config = target / "config.yaml"
        if checkpoint:
            path = Path(checkpoint) if Path(checkpoint).suffix else target / "checkpoints" / f"{checkpoint}.pt"
        else:
            best = target / "checkpoints" / "best.pt"
            path = best if best.exists() else target / "checkpoints" / "last.pt"
        if not path.exists():
            raise EvalTargetError(f"no checkpoint {path} in the run {target}")
        return path, config
    if not target.exists():
        raise EvalTargetError(f"{target} is neither a run directory nor a checkpoint file")
    return target, None


def load_finetuned(target: str | Path, checkpoint: str | None = None, overrides: list[str] = ()):
    """(config, classifier with the checkpoint's weights, checkpoint path) of a fine-tuned run."""
    from ..meta_arch.classification import build_classification

    path, config = resolve_target(target, checkpoint)
    state = load(path)
    if state.get("task") != "finetune":
        raise EvalTargetError(f"{path} is a '{state.get('task')}' checkpoint; vmim eval scores fine-tuned classifiers "
                              "(vmim probe measures pretrained features)")
    if config is not None:
        cfg = load_config(config, list(overrides), task="finetune")
    else:
        cfg = build_config(apply_overrides(yaml.safe_load(state["config"]), list(overrides)))
    model = build_classification(cfg, int(state["model"]["head.weight"].shape[0]))
    model.load_state_dict(state["model"])
    return cfg, model.eval(), path


def build_eval_sources(cfg, num_classes: int) -> list[tuple]:
    """(name, source, files listed, files missing) of every ``eval.datasets`` entry, each checked first: its paths,
    its list's lines and its labels against ``num_classes``. Raises ConfigError naming the entry's key (and the
    file and line where there is one)."""
    from ..data import build_source
    from ..data.indexes import IndexFormatError
    from ..data.labels import check_labels
    from ..preflight import check_dataset_paths

    if not cfg.eval.datasets:
        raise ConfigError("eval.datasets", "names no dataset to score (add eval.datasets.<name>.* overrides)")
    built = []
    for name, ds in cfg.eval.datasets.items():
        key = f"eval.datasets.{name}"
        check_dataset_paths(key, ds)
        try:
            source, listed, missing = build_source(name, ds, cfg.data, cfg.model.in_chans)
        except (IndexFormatError, FileNotFoundError) as err:  # a malformed line; listed files missing
            raise ConfigError(key, str(err)) from None
        check_labels(key, source, num_classes)
        built.append((name, source, listed, missing))
    return built


def run_eval(target: str | Path, checkpoint: str | None = None, overrides: list[str] = (),
             out_dir: str | Path | None = None) -> dict:
    """Score every ``eval.datasets`` entry; returns {name: EvalResult} (on every rank).

    Raises:
        ConfigError / EvalTargetError: refused before any work (see the module docstring).
        TooManyBadFiles: a dataset's bad files passed ``data.max_bad_fraction``.
        Interrupted: a stop signal arrived.
    """
    from ..data.bad_files import BadFileMonitor
    from ..data.eval_views import build_test_loader
    from .distributed import cleanup, init_distributed
    from .evaluate import evaluate, report_failures
    from .preemption import Interrupted, StopSignals
    from .precision import resolve_device, resolve_precision

    with StopSignals(immediate="evaluation set-up") as stop:
        cfg, model, path = load_finetuned(target, checkpoint, overrides)
        built = build_eval_sources(cfg, model.num_classes)
        device = resolve_device(cfg.train.device)
        precision = resolve_precision(cfg.train.precision, device)
        dist = init_distributed(device.type)
        try:
            if device.type == "cuda":
                device = torch.device("cuda", dist.local_rank)
            model.to(device)
            out = Path(out_dir) if out_dir else (Path(target) if Path(target).is_dir() else path.parent) / "eval"
            e, d, results = cfg.eval, cfg.data, {}
            report = (lambda line: print(line, flush=True)) if dist.is_main else (lambda line: None)
            monitor = BadFileMonitor([b[0] for b in built], [b[2] for b in built], [b[3] for b in built],
                                     d.max_bad_fraction, action="counted as a miss", report=report)
            monitor.check_all()
            stop.immediate = None  # from here on a signal is recorded and honoured after the current batch
            for i, (name, source, *_) in enumerate(built):
                loader = build_test_loader(source, e.num_views if source.modality == "video" else 1, e.num_crops,
                                           e.short_side, e.batch_size, d.num_workers, dist.world_size, dist.rank,
                                           d.decode_timeout_s, d.decode_isolation)
                try:
                    result = evaluate(model, loader, model.num_classes, device, precision, dist, stop=stop)
                except Interrupted as err:
                    kept = f"; the predictions of {', '.join(results)} were written" if results else ""
                    raise Interrupted(f"{err} of eval dataset '{name}'; its predictions were not written{kept}",
                                      err.request, err.signal_name) from None
                report_failures(monitor, i, result)
                results[name] = result
                if dist.is_main:
                    out.mkdir(parents=True, exist_ok=True)
                    result.write_predictions(out / f"{name}.predictions.tsv")
                    print(f"{name}: {path} -> {out / f'{name}.predictions.tsv'}", flush=True)
                    print(result.summary_line(), flush=True)
        finally:
            cleanup()
    return results
