"""``vmim eval``: the multi-view test of a fine-tuned run, on one process or sharded over ``torchrun`` ranks.

The target is a fine-tuning run directory or a checkpoint file (which carries its resolved config). Every
``eval.datasets`` entry (or, with ``--test LIST``, that data instead) is scored with ``eval.num_views`` x
``eval.num_crops`` views; rank 0 prints first which checkpoint it scores and why (:func:`checkpoint_line`), writes
``<run>/eval/<name>.predictions.tsv`` and prints, per dataset, one line per bad file (if any) and
``top1 X% top5 Y% (N videos, K x C views)`` last.

Which checkpoint (issue 21: never a test-selected number by default; :func:`choose_checkpoint`):

* a run directory without ``--checkpoint``: ``checkpoints/best.pt`` only when it records ``selected_on`` a validation
  set (``val/<name> top-1``: :mod:`vmim.engine.finetune`), else ``checkpoints/last.pt``. A ``best.pt`` without
  ``selected_on`` was kept by an earlier vmim on the first ``eval.datasets`` entry, i.e. on the test set: never the
  default, and said so in a note line;
* ``--checkpoint best|last|FILE`` or a file as the target: that one, said so (and a note when it is such an old
  ``best.pt``);
* the first line: ``checkpoint PATH: step S, epoch E; RULE`` where RULE is ``best validation top-1 on val/<name> of N
  validations (X%)``, ``the last checkpoint``, ``given with --checkpoint`` or ``given as the target``.

``--test LIST`` (:func:`vmim.data.list_entry.entry_for`: a list file, an image folder or ``KIND:SPLIT``) replaces
``eval.datasets`` in the run's raw config before it is built, each entry named by the file stem (``KIND_SPLIT``), so
``eval.datasets.<name>.*`` overrides tune how it is read and every refusal below applies to it.

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

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from ..config import ConfigError, apply_overrides, build_config
from ..errors import InputError
from ..safe_load import load_dict
from .checkpoint import load


class EvalTargetError(InputError):
    """What ``vmim eval`` was pointed at is not a fine-tuned run or checkpoint (said in one line, no traceback)."""


@dataclass
class Choice:
    """The checkpoint ``vmim eval`` scores, the config to read it with (None: the checkpoint's own), the rule that
    chose it (words for the first printed line) and note lines printed after it."""

    path: Path
    config: Path | None
    rule: str
    notes: list[str] = field(default_factory=list)


def _peek(path: Path) -> dict:
    """A checkpoint's plain data, its tensors mapped rather than read (zip files); safe (weights only)."""
    return load_dict(path, mmap=True)


def _validated(state: dict) -> bool:
    """Whether a checkpoint was selected on a validation set (``selected_on`` ``val/...``)."""
    return str(state.get("selected_on", "")).startswith("val/")


def _test_selected(path: Path, state: dict) -> str:
    return (f"note: {path} records no selected_on: an earlier vmim kept it for the best top-1 on the test set "
            "(eval.datasets), so its score is test-selected")


def _best_rule(best: dict, last: Path) -> str:
    """``best validation top-1 on val/<name> of N validations (X%)``; N from last.pt's validation state when it has
    one, else the count best.pt recorded when it was written."""
    count = int(best.get("validations", 0))
    if last.exists():
        try:
            later = _peek(last).get("hooks", {}).get("Validation", {}).get("validations", 0)
            count = max(count, int(later))  # the run's last.pt has seen every validation best.pt has, and later ones
        except (OSError, ValueError):  # a damaged last.pt: best.pt's own count
            pass
    name = str(best["selected_on"]).removesuffix(" top-1")
    of = f" of {count} validation{'s' if count != 1 else ''}" if count else ""
    return f"best validation top-1 on {name}{of} ({100 * float(best.get('top1', 0)):.2f}%)"


def choose_checkpoint(target: str | Path, checkpoint: str | None = None) -> Choice:
    """Which checkpoint of a run directory or file ``vmim eval`` scores, and why (see the module docstring).

    Raises:
        EvalTargetError: the target is neither a run directory nor a file, or the run holds no such checkpoint.
        UnsafeFileError / InputError: ``best.pt`` (read to see what selected it) is unsafe or not a checkpoint.
    """
    target = Path(target)
    if not target.is_dir():
        if not target.exists():
            raise EvalTargetError(f"{target} is neither a run directory nor a checkpoint file")
        return Choice(target, None, "given as the target")
    config, folder = target / "config.yaml", target / "checkpoints"
    best, last = folder / "best.pt", folder / "last.pt"
    if checkpoint:
        path = Path(checkpoint) if Path(checkpoint).suffix else folder / f"{checkpoint}.pt"
        if not path.exists():
            raise EvalTargetError(f"no checkpoint {path} in the run {target}")
        return Choice(path, config, "given with --checkpoint")
    notes = []
    if best.exists():
        state = _peek(best)
        if _validated(state):
            return Choice(best, config, _best_rule(state, last))
        notes.append(_test_selected(best, state) + "; not scored by default (--checkpoint best scores it)")
    if not last.exists():
        old = f" ({best} was selected on the test set: --checkpoint best scores it anyway)" if best.exists() else ""
        raise EvalTargetError(f"no checkpoint {last} in the run {target}{old}")
    return Choice(last, config, "the last checkpoint", notes)


def resolve_target(target: str | Path, checkpoint: str | None = None) -> tuple[Path, Path | None]:
    """(checkpoint file, config file or None = the checkpoint's own) of a run directory or a checkpoint file, chosen
    by :func:`choose_checkpoint`."""
    choice = choose_checkpoint(target, checkpoint)
    return choice.path, choice.config


def checkpoint_line(choice: Choice, state: dict) -> str:
    """``checkpoint PATH: step S, epoch E; RULE``: the first line ``vmim eval`` prints."""
    epoch = state.get("epoch", state.get("train_state", {}).get("epoch", "?"))
    return f"checkpoint {choice.path}: step {state.get('step', '?')}, epoch {epoch}; {choice.rule}"


def _run_config(choice: Choice, state: dict) -> dict:
    """The run's raw config (its config.yaml, or the checkpoint's own copy)."""
    if choice.config is None:
        return yaml.safe_load(state["config"]) or {}
    try:
        raw = yaml.safe_load(choice.config.read_text())
    except FileNotFoundError:
        raise EvalTargetError(f"{choice.config} does not exist: not a run directory of vmim finetune") from None
    except yaml.YAMLError as err:
        raise ConfigError("--config", f"{choice.config} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError("--config", f"{choice.config} must hold a mapping at the top level")
    found = raw.get("task", "pretrain")
    if found != "finetune":
        raise ConfigError("task", f"vmim eval takes a 'finetune' run, and {choice.config} is '{found}'")
    return raw


def eval_config(raw: dict, overrides: list[str] = (), test_datasets: dict | None = None):
    """The validated config ``vmim eval`` reads: ``test_datasets`` (``--test``) in place of ``eval.datasets``, then
    the overrides. Raises ConfigError naming the key."""
    raw = dict(raw)
    if test_datasets:
        raw["eval"] = {**(raw.get("eval") or {}), "datasets": {k: dict(v) for k, v in test_datasets.items()}}
    return build_config(apply_overrides(raw, list(overrides)))


def load_finetuned(target: str | Path, checkpoint: str | None = None, overrides: list[str] = (),
                   test_datasets: dict | None = None, choice: Choice | None = None):
    """(config, classifier with the checkpoint's weights, checkpoint path, checkpoint state without its weights) of
    a fine-tuned run; ``test_datasets`` replace ``eval.datasets`` (``--test``)."""
    from ..meta_arch.classification import build_classification

    choice = choice or choose_checkpoint(target, checkpoint)
    path = choice.path
    state = load(path)
    if state.get("task") != "finetune":
        raise EvalTargetError(f"{path} is a '{state.get('task')}' checkpoint; vmim eval scores fine-tuned classifiers "
                              "(vmim probe measures pretrained features)")
    cfg = eval_config(_run_config(choice, state), overrides, test_datasets)
    model = build_classification(cfg, int(state["model"]["head.weight"].shape[0]))
    model.load_state_dict(state.pop("model"))
    return cfg, model.eval(), path, {k: v for k, v in state.items() if k != "optimizer"}


def build_eval_sources(cfg, num_classes: int) -> list[tuple]:
    """(name, source, files listed, files missing) of every ``eval.datasets`` entry, each checked first: its paths,
    its list's lines and its labels against ``num_classes``. Raises ConfigError naming the entry's key (and the
    file and line where there is one)."""
    from ..data import build_source
    from ..data.indexes import IndexFormatError
    from ..data.labels import check_labels
    from ..preflight import check_dataset_paths

    if not cfg.eval.datasets:
        raise ConfigError("eval.datasets", "names no dataset to score (give --test LIST, or eval.datasets.<name>.* "
                                            "overrides)")
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
             out_dir: str | Path | None = None, test_datasets: dict | None = None) -> dict:
    """Score every ``eval.datasets`` entry (``test_datasets``: these entries instead, ``--test``); returns
    {name: EvalResult} (on every rank).

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
        choice = choose_checkpoint(target, checkpoint)
        cfg, model, path, state = load_finetuned(target, checkpoint, overrides, test_datasets, choice)
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
            report(checkpoint_line(choice, state))
            if "top1" in state and not _validated(state) and choice.rule != "the last checkpoint":
                choice.notes.append(_test_selected(path, state))
            for note in choice.notes:
                report(note)
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
