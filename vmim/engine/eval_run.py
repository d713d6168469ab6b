"""``vmim eval``: the multi-view test of a fine-tuned run, on one process or sharded over ``torchrun`` ranks.

The target is a fine-tuning run directory (its ``checkpoints/best.pt``, else ``last.pt``) or a checkpoint file (which
carries its resolved config). Every ``eval.datasets`` entry is scored with ``eval.num_views`` x ``eval.num_crops``
views; rank 0 writes ``<run>/eval/<name>.predictions.tsv`` and prints, per dataset, the bad-file line (if any) and
``top1 X% top5 Y% (N videos, K x C views)`` last.
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
    from ..models.classifier import build_classifier

    path, config = resolve_target(target, checkpoint)
    state = load(path)
    if state.get("task") != "finetune":
        raise EvalTargetError(f"{path} is a '{state.get('task')}' checkpoint; vmim eval scores fine-tuned classifiers "
                              "(vmim probe measures pretrained features)")
    if config is not None:
        cfg = load_config(config, list(overrides), task="finetune")
    else:
        cfg = build_config(apply_overrides(yaml.safe_load(state["config"]), list(overrides)))
    model = build_classifier(cfg, int(state["model"]["head.weight"].shape[0]))
    model.load_state_dict(state["model"])
    return cfg, model.eval(), path


def run_eval(target: str | Path, checkpoint: str | None = None, overrides: list[str] = (),
             out_dir: str | Path | None = None) -> dict:
    """Score every ``eval.datasets`` entry; returns {name: EvalResult} (on every rank)."""
    from ..data import build_sources
    from ..data.eval_views import build_test_loader
    from .distributed import cleanup, init_distributed
    from .evaluate import evaluate
    from .precision import resolve_device, resolve_precision

    cfg, model, path = load_finetuned(target, checkpoint, overrides)
    if not cfg.eval.datasets:
        raise ConfigError("eval.datasets", "names no dataset to score (add eval.datasets.<name>.* overrides)")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    dist = init_distributed(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    model.to(device)
    out = Path(out_dir) if out_dir else (Path(target) if Path(target).is_dir() else path.parent) / "eval"
    e, results = cfg.eval, {}
    try:
        for name, source, *_ in build_sources(cfg.eval.datasets, cfg.data, cfg.model.in_chans):
            loader = build_test_loader(source, e.num_views if source.modality == "video" else 1, e.num_crops,
                                       e.short_side, e.batch_size, cfg.data.num_workers, dist.world_size, dist.rank,
                                       cfg.data.decode_timeout_s, cfg.data.decode_isolation)
            result = evaluate(model, loader, model.num_classes, device, precision, dist)
            results[name] = result
            if dist.is_main:
                out.mkdir(parents=True, exist_ok=True)
                result.write_predictions(out / f"{name}.predictions.tsv")
                print(f"{name}: {path} -> {out / f'{name}.predictions.tsv'}", flush=True)
                if result.failed_line():
                    print(result.failed_line(), flush=True)
                print(result.summary_line(), flush=True)
    finally:
        cleanup()
    return results
