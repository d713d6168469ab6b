"""Probes: how much do frozen features know? Linear, k-NN and attentive classifiers on a backbone's features, beside
the same protocol on the architecture at random init and on the raw pixels, at several label budgets.

``vmim probe --config FILE`` takes a fine-tuning config (``task: finetune``): features of ``data.datasets`` (fit: the
samples that config's fine-tune trains on, after its ``eval.val_fraction`` carve and ``fraction`` subset) and
``eval.datasets`` (score) come from ``init``'s backbone through the evaluation transform (``eval.val_views`` x
``eval.val_crops`` fixed views, averaged; no random crop or flip). ``vmim probe RUN`` takes the model of a pretraining
or fine-tuning run (:func:`vmim.config.probe_run.probe_config_for_run`) and fits on ``--train``, scores on ``--test``
(default: the built-in digits' train and test images).

The protocol (docs/probes.md):

* **Feature sets** (columns): ``pretrained`` (the weights probed), and ``probe.baselines``: ``random_init`` (the same
  architecture drawn first after seeding ``train.seed``) and ``raw_pixels`` (:mod:`vmim.engine.pixel_features`).
* **One extraction** (:func:`vmim.engine.probe_features.extract`): every file is decoded once and goes through every
  feature set in the same batch; every label budget and method is then fit on those arrays. A progress bar with an
  ETA (stderr) counts the samples.
* **Label budgets** (``probe.labels_per_class``, 0 = all): ``probe.seeds`` per-class draws each (draw ``s`` with
  seed ``s``, the same draws for every feature set and method, so the columns are paired); all labels is one fit for
  the deterministic linear and k-NN probes. A budget that every class meets with all its samples is all labels: not
  scored twice when 0 is asked too.
* **Methods** (rows): ``linear`` (standardized features, L2 logistic regression, sklearn, ``probe.C``), ``knn``
  (cosine similarity, the ``probe.knn_k`` nearest fit samples vote weighted by similarity: DINO's probe without the
  temperature), ``attentive`` (:mod:`vmim.engine.attentive_probe`, trained per draw with seed ``train.seed + s``;
  slow, so off by default).
* **Reported**: the first line names the checkpoint, its step (read from the file's plain data without loading the
  tensors: :func:`vmim.safe_load.peek`, which also refuses a file that would run code, before any work) and the data
  sides with their sizes; then, per budget, a table of ``mean ± std`` (%); the results files
  (:mod:`vmim.engine.probe_results`) go to the caller's folder.

Bad data and stop signals as in training (issue 19):

* decoding is isolated as training's is (``data.decode_isolation``, ``data.decode_timeout_s``): a decoder stuck in C
  is killed after the timeout instead of hanging the probe;
* a file that fails to load is **left out**, reported once on stdout (one line per file) and counted by one
  :class:`~vmim.data.bad_files.BadFileMonitor` over every fit and test dataset (named by config key, or by the
  ``--train`` / ``--test`` flag); past ``data.max_bad_fraction`` the probe stops with TooManyBadFiles (exit 1). Left
  out rather than counted as a miss (as ``vmim eval`` does): a probe has no prediction for a sample it never saw on
  the fit side, and every feature set sees the same files (one pass), so the comparison stays fair; the results say
  how many were left out (and which, in results.json) and that the accuracies are over the files that loaded;
* SIGTERM / SIGUSR2 stop the feature extraction after the current batch, and set-up and the classifier fits at
  once (nothing is written before the end, so nothing is lost):
  :class:`~vmim.engine.preemption.Interrupted`, one line, exit 128 + the signal.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..errors import RunError, UnsafeFileError
from .preemption import StopSignals
from .probe_features import ModelFeatures, extract, per_class_subset
from .probe_results import TITLES, Budget, Cell, ProbeReport, Progress


def linear_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, C: float = 1.0
                 ) -> float:
    """Test accuracy of an L2 logistic regression on standardized features, fit with one BLAS / OpenMP thread: the
    fits are small (a few thousand samples), and sklearn's thread pools beside torch's oversubscribe the cores (on 2
    loaded cores the 18 linear fits of the digits demo took 40 s with the default pools, 1.5 s with one thread)."""
    from threadpoolctl import threadpool_limits

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with threadpool_limits(limits=1):
        clf.fit(x_fit, y_fit)
        return float(clf.score(x_test, y_test))


def knn_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, k: int = 20) -> float:
    """Test accuracy of a similarity-weighted k-NN vote under cosine similarity."""
    def unit(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x).float()
        return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)

    sims = unit(x_test) @ unit(x_fit).T  # (n_test, n_fit)
    k = min(k, sims.shape[1])
    top, idx = sims.topk(k, dim=1)
    classes = int(max(y_fit.max(), y_test.max())) + 1
    votes = torch.zeros(len(x_test), classes).scatter_add_(1, torch.from_numpy(y_fit)[idx], top.clamp_min(0))
    return float((votes.argmax(dim=1).numpy() == y_test).mean())


@dataclass
class Side:
    """The features of one side (fit or test): ``{feature set: {"pooled": (n, D), "tokens": (n, L, D')}}``,
    labels ``(n,)``, and per dataset (display key) the samples that loaded."""

    features: dict[str, dict[str, np.ndarray]]
    labels: np.ndarray
    loaded: dict[str, int]


@dataclass
class _Dataset:
    key: str
    """The dataset's name in messages: ``data.datasets.<name>`` / ``eval.datasets.<name>``, or the flag."""
    side: str
    source: Any
    listed: int
    missing: int
    what: str
    """What it is: the list's path, or ``KIND:SPLIT``."""


def describe_dataset(ds) -> str:
    """A dataset entry in a few words: its list or folder, or ``KIND:SPLIT``; ``x0.1`` for a fraction."""
    path = getattr(ds, "path", "") or ""
    what = path if path else f"{ds.kind}:{getattr(ds, 'split', '')}".rstrip(":")
    return what + (f" x{ds.fraction:g}" if getattr(ds, "fraction", 1.0) < 1 else "")


def describe_checkpoint(init: str) -> dict:
    """``{"path", "step", "task", "what"}`` of the weights ``init`` names, read cheaply: the file's plain data only
    (:func:`vmim.safe_load.peek`: no tensor is read). A run directory stands for its newest checkpoint
    (:func:`vmim.checkpoint_files.candidates`: ``last.pt`` or a sharded ``last/``, else the newest kept step), as
    :func:`vmim.models.loading.read_weights` reads it; a sharded folder is described by its ``state.pt``."""
    from ..checkpoint_files import SHARDED_STATE, candidates, is_sharded_checkpoint
    from ..safe_load import peek

    if not init:
        return {"path": None, "step": None, "task": None, "what": "a random init (init is empty)"}
    path = Path(init).expanduser()
    if path.is_dir() and not is_sharded_checkpoint(path):  # a run directory: its newest checkpoint
        found = candidates(path / "checkpoints")
        path = found[0] if found else path
    try:
        skeleton = peek(path / SHARDED_STATE if is_sharded_checkpoint(path) else path)
    except UnsafeFileError:  # refused here, before any work
        raise
    except Exception:  # noqa: BLE001  (the full read, later, names what is wrong)
        skeleton = None
    skeleton = skeleton if isinstance(skeleton, dict) else {}
    step = skeleton.get("step") if isinstance(skeleton.get("step"), int) else None
    task = skeleton.get("task") if isinstance(skeleton.get("task"), str) else None
    if skeleton.get("format") == "vmim-backbone":
        source = skeleton.get("source") if isinstance(skeleton.get("source"), dict) else {}
        detail = f"converted {source.get('format', '?')} file, no step"
    else:
        detail = (f"{task}, " if task else "") + (f"step {step}" if step is not None else "step unknown")
    return {"path": str(path), "step": step, "task": task, "what": f"{path} ({detail})"}


def build_feature_sets(cfg, device: torch.device) -> dict[str, Any]:
    """``{"pretrained": ..., "random_init": ..., "raw_pixels": ...}`` per ``probe.baselines``, in column order: the
    models in eval mode on ``device``; tokens too when the attentive probe is asked."""
    from ..meta_arch.classification import build_classification
    from ..models.loading import load_init
    from .pixel_features import PixelFeatures

    p = cfg.probe
    tokens = "attentive" in p.methods
    models = {}
    if "random_init" in p.baselines:  # the backbone is the first draw after seeding: the same weights for a seed
        torch.manual_seed(cfg.train.seed)
        models["random_init"] = build_classification(cfg, 1)
    models["pretrained"] = build_classification(cfg, 1)
    if cfg.init:
        load_init(models["pretrained"].backbone, cfg.init, cfg.model)
    sets: dict[str, Any] = {name: ModelFeatures(models[name].to(device).eval(), tokens)
                            for name in TITLES if name in models}
    if "raw_pixels" in p.baselines:
        sets["raw_pixels"] = PixelFeatures(p.raw_pixels_dim, cfg.model.patch_size, cfg.model.tubelet_size, tokens)
    return sets


def probe(cfg, out_dir: str | Path | None = None, side_names: dict[str, str] | None = None, command: str = "",
          ) -> ProbeReport:
    """Probe ``cfg.init``'s backbone and the baselines per a :class:`~vmim.config.FinetuneConfig`; print the first
    line, a table per label budget and the notes; write ``results.json`` and ``results.tsv`` to ``out_dir`` (None:
    no files).

    Args:
        side_names: ``{"data.datasets": "--train", "eval.datasets": "--test"}``: name each side's dataset by the
            flag that gave it (in messages and the results), instead of its config key.
        command: the command line, recorded in results.json.
    Raises:
        ConfigError: a side names no dataset.
        TooManyBadFiles: more than ``data.max_bad_fraction`` of a dataset's files failed to load.
        Interrupted: a stop signal arrived (see the module docstring).
        RunError: no sample of a dataset loaded, or the fit side holds a single class.
    """
    from ..config import ConfigError
    from ..data.bad_files import BadFileMonitor
    from .precision import resolve_device

    started = time.monotonic()
    with StopSignals(immediate="probe set-up") as stop:
        datasets: list[_Dataset] = []
        for side, entries in (("data.datasets", cfg.data.datasets), ("eval.datasets", cfg.eval.datasets)):
            if not entries:
                raise ConfigError(side, f"names no dataset for the probe to {'fit' if side[0] == 'd' else 'score'} on")
            flag = (side_names or {}).get(side)
            for name, source, listed, missing in _side_sources(side, entries, cfg):
                key = flag if flag and len(entries) == 1 else f"{flag or side}.{name}"
                datasets.append(_Dataset(key, side, source, listed, missing, describe_dataset(entries[name])))
        monitor = BadFileMonitor([d.key for d in datasets], [d.listed for d in datasets],
                                 [d.missing for d in datasets], cfg.data.max_bad_fraction, action="left out",
                                 report=lambda line: print(line, flush=True))
        monitor.check_all()
        checkpoint = describe_checkpoint(cfg.init)
        print(_first_line(checkpoint, datasets), flush=True)
        device = resolve_device(cfg.train.device)
        sets = build_feature_sets(cfg, device)
        stop.immediate = None  # extraction: honoured after the current batch
        progress = Progress(sum(len(d.source) for d in datasets), "features", "samples")
        try:
            fit, test = (_extract_side(sets, datasets, side, cfg, monitor, stop, progress, device)
                         for side in ("data.datasets", "eval.datasets"))
        except BaseException:
            progress.close(summary=False)
            raise
        extraction_s = progress.close()
        stop.immediate = "the probe's classifier fits"
        if len(np.unique(fit.labels)) < 2:
            raise RunError(f"probe: the fit side holds one class ({int(fit.labels[0])}); a classifier needs two")
        info = _info(cfg, checkpoint, datasets, monitor, fit, test, sets, command)
        report = ProbeReport(info, list(sets), list(cfg.probe.methods))
        fits_started = time.monotonic()
        score(report, fit, test, cfg, device)
        info["seconds"] = {"extraction": round(extraction_s, 2), "fits": round(time.monotonic() - fits_started, 2),
                           "total": round(time.monotonic() - started, 2)}
        for line in report.notes():
            print(line, flush=True)
        if out_dir is not None:
            files = report.write(out_dir)
            print(f"results: {files['json']}, {Path(files['tsv']).name}", flush=True)
    return report


def _side_sources(side: str, entries: dict, cfg) -> list[tuple]:
    """The built datasets of one side. A config with ``eval.val_fraction`` fits on what its fine-tune trains on: each
    training list less its carved validation set, then the ``fraction`` subset (:mod:`vmim.data.splits`), so a probe
    and a fine-tune of one config see the same labelled samples."""
    from ..data import build_sources
    from ..data.build import build_carved_sources

    e = cfg.eval
    if side == "data.datasets" and e.val_fraction:
        return build_carved_sources(entries, cfg.data, cfg.model.in_chans, e.val_fraction, e.val_seed)[0]
    return build_sources(entries, cfg.data, cfg.model.in_chans)


def _first_line(checkpoint: dict, datasets: list[_Dataset]) -> str:
    def side(name: str) -> str:
        mine = [d for d in datasets if d.side == name]
        n = sum(len(d.source) for d in mine)
        return f"{n} ({', '.join(d.what for d in mine)})"

    return f"probe of {checkpoint['what']}: fit {side('data.datasets')}, test {side('eval.datasets')}"


def _extract_side(sets: dict, datasets: list[_Dataset], side: str, cfg, monitor, stop: StopSignals, progress,
                  device) -> Side:
    """Features of every dataset of ``side``, concatenated."""
    e, d = cfg.eval, cfg.data
    parts, labels, loaded = [], [], {}
    for i, ds in enumerate(datasets):
        if ds.side != side:
            continue
        feats, y, _ = extract(sets, ds.source, e.val_views, e.val_crops, e.short_side, e.batch_size * 8,
                              d.num_workers, device, decode_timeout_s=d.decode_timeout_s, isolate=d.decode_isolation,
                              monitor=monitor, dataset=i, stop=stop, progress=progress)
        parts.append(feats)
        labels.append(y)
        loaded[ds.key] = len(y)
    features = {name: {key: np.concatenate([p[name][key] for p in parts]) for key in parts[0][name]}
                for name in sets}
    return Side(features, np.concatenate(labels), loaded)


def _draws(labels: np.ndarray, budget: int, seeds: int) -> tuple[list[tuple[int | None, np.ndarray]], bool]:
    """``([(label seed or None, fit indices)], all labels?)`` of a budget."""
    counts = np.unique(labels, return_counts=True)[1]
    if budget == 0 or budget >= counts.max():
        return [(None, np.arange(len(labels)))], True
    return [(s, per_class_subset(labels, budget, s)) for s in range(seeds)], False


def _runs(method: str, draws: list, everything: bool, seeds: int, train_seed: int) -> list[tuple]:
    """``[(label seed, fit indices, training seed)]`` of one cell: a fit per label draw; the attentive probe trains
    ``seeds`` times (seed ``train_seed + s``), on draw ``s``, or on all labels every time."""
    if method != "attentive":
        return [(label_seed, idx, None) for label_seed, idx in draws]
    return [(None, draws[0][1], train_seed + s) if everything else (draws[s][0], draws[s][1], train_seed + s)
            for s in range(seeds)]


def _accuracy(method: str, fit: tuple, test: tuple, p, train_seed: int | None, device) -> float:
    """Test accuracy of one fit of ``method`` on ``fit`` = (x, y), scored on ``test``."""
    if method == "linear":
        return linear_probe(*fit, *test, p.C)
    if method == "knn":
        return knn_probe(*fit, *test, p.knn_k)
    from .attentive_probe import attentive_probe

    a = p.attentive
    return attentive_probe(*fit, *test, steps=a.steps, lr=a.lr, weight_decay=a.weight_decay, heads=a.heads,
                           batch_size=a.batch_size, seed=train_seed, standardize=True, device=device)


def score(report: ProbeReport, fit: Side, test: Side, cfg, device: torch.device | str = "cpu") -> None:
    """Fill ``report`` with a :class:`~vmim.engine.probe_results.Budget` per ``probe.labels_per_class`` and a
    :class:`~vmim.engine.probe_results.Cell` per feature set x method x budget; prints each budget's table as soon as
    it is scored, then the budgets not scored (the same as all labels) with why."""
    p = cfg.probe
    counts = np.unique(fit.labels, return_counts=True)[1]
    plan = []
    for budget in p.labels_per_class:
        draws, everything = _draws(fit.labels, budget, p.seeds)
        capped = int((counts < budget).sum()) if budget else 0
        if budget and everything and 0 in p.labels_per_class:
            report.budgets.append(Budget(budget, len(fit.labels), len(test.labels), 0, capped, len(counts),
                                         skipped=f"{budget} labels per class: every class has at most {counts.max()} "
                                                 "fit samples, the same as all labels (scored once)"))
        else:
            plan.append((Budget(budget, len(draws[0][1]), len(test.labels), len(draws), capped, len(counts)),
                         {m: _runs(m, draws, everything, p.seeds, cfg.train.seed) for m in p.methods}))
            report.budgets.append(plan[-1][0])  # in the order asked
    progress = Progress(sum(len(report.feature_sets) * len(r) for _, runs in plan for r in runs.values()), "fits",
                        "fits")
    try:
        for budget, runs in plan:
            for method in p.methods:
                key = "tokens" if method == "attentive" else "pooled"
                for name in report.feature_sets:
                    x_fit, x_test = fit.features[name][key], test.features[name][key]
                    cell = Cell(name, method, budget.labels_per_class)
                    for i, (label_seed, idx, train_seed) in enumerate(runs[method]):
                        acc = _accuracy(method, (x_fit[idx], fit.labels[idx]), (x_test, test.labels), p, train_seed,
                                        device)
                        cell.draws.append({"draw": i, "label_seed": label_seed, "train_seed": train_seed,
                                           "fit": int(len(idx)), "accuracy": float(acc)})
                        progress.update()
                    report.cells.append(cell)
            for line in report.table(budget):
                progress.write(line)
    except BaseException:
        progress.close(summary=False)
        raise
    progress.close()
    for budget in report.budgets:
        if budget.skipped:
            print(budget.skipped, flush=True)


def _info(cfg, checkpoint: dict, datasets: list[_Dataset], monitor, fit: Side, test: Side, sets: dict,
          command: str) -> dict:
    """The results' header: what was probed, how, on what (counts per side), and which files were left out."""
    p, e, d = cfg.probe, cfg.eval, cfg.data
    left_out = [{"dataset": name, "index": index, "path": path, "reason": reason}
                for name, entries in monitor.state_dict()["bad_files"].items() for index, path, reason in entries]
    sides = {}
    for side, got, label in (("data.datasets", fit, "fit"), ("eval.datasets", test, "test")):
        classes, counts = np.unique(got.labels, return_counts=True)
        sides[label] = {
            "samples": int(len(got.labels)),
            "classes": {str(int(c)): int(n) for c, n in zip(classes, counts)},
            "datasets": [{"name": ds.key, "what": ds.what, "listed": ds.listed, "missing": ds.missing,
                          "left_out": monitor.num_bad(i), "samples": got.loaded.get(ds.key, 0)}
                         for i, ds in enumerate(datasets) if ds.side == side]}
    pixels = sets.get("raw_pixels")
    return {
        "command": command,
        "checkpoint": {k: checkpoint[k] for k in ("path", "step", "task")},
        "protocol": {
            "methods": list(p.methods), "labels_per_class": list(p.labels_per_class), "seeds": p.seeds,
            "knn_k": p.knn_k, "C": p.C, "baselines": list(p.baselines), "train_seed": cfg.train.seed,
            "attentive": dataclasses.asdict(p.attentive) if "attentive" in p.methods else None,
            "views": e.val_views, "crops": e.val_crops, "short_side": e.short_side, "img_size": d.img_size,
            "num_frames": d.num_frames, "model": {"backbone": cfg.model.backbone, "patch_size": cfg.model.patch_size,
                                                  "tubelet_size": cfg.model.tubelet_size},
            "raw_pixels": {"max_dim": p.raw_pixels_dim, "shape": list(pixels.shape)} if pixels is not None else None,
            "feature_dims": {name: int(fit.features[name]["pooled"].shape[1]) for name in sets},
            "token_shapes": {name: list(fit.features[name]["tokens"].shape[1:]) for name in sets
                             if "tokens" in fit.features[name]} or None,
        },
        "data": sides,
        "left_out": left_out,
    }


def probe_config_for_pretraining_run(run_cfg, init: str, overrides: list[str] = ()):
    """The probe of ``vmim probe RUN_DIR`` without ``--train`` / ``--test``: the run's backbone and input statistics,
    fit on the built-in digits' train split (centred images), scored on their test split
    (:func:`vmim.config.probe_run.probe_config_for_run`)."""
    from ..config.probe_run import probe_config_for_run

    return probe_config_for_run(run_cfg, init, overrides=overrides)
