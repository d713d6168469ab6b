"""What every probe reads: frozen features of a source through the evaluation transform, and the per-class label
draws of a low-label probe (:func:`per_class_subset`). Shared by the linear / k-NN probes and the attentive probe
(:mod:`vmim.engine.attentive_probe`).

Decisions:

* **One pass for every feature set** (:func:`extract`): each batch is decoded once and handed to every feature set
  (the pretrained model, its random init, the raw pixels; pooled features and, for the attentive probe, tokens), so
  a probe decodes each file once however many feature sets and label budgets it scores, and every feature set holds
  exactly the same samples (a file that fails, fails for all of them).
* **A feature set** is a callable: uint8 ``(N, C, T, S, S)`` -> ``{"pooled": (N, D), "tokens": (N, L, D')}`` (any
  keys); each output is averaged over the V = views x crops evaluation views of a sample. :class:`ModelFeatures`
  wraps a :class:`~vmim.meta_arch.classification.Classification`; :class:`vmim.engine.pixel_features.PixelFeatures`
  is the raw-pixel baseline.
* Bad files are left out and stop signals honoured after the current batch, as the module docstring of
  :mod:`vmim.engine.probe` says; ``progress`` (anything with ``update(n)``) is told of every finished sample.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch

from ..errors import RunError
from ..signals import WaitAbandoned
from .evaluate import next_batch
from .preemption import Interrupted, StopSignals

FeatureSet = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


class ModelFeatures:
    """A model as a feature set: ``"pooled"`` = ``model.features(clip)`` ``(N, D)``, and with ``tokens``
    ``"tokens"`` = ``model.tokens(clip)`` ``(N, L, D)`` (the attentive probe's input; a second backbone forward)."""

    def __init__(self, model, tokens: bool = False):
        self.model, self.want_tokens = model, tokens

    def __call__(self, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"pooled": self.model.features(clip)}
        if self.want_tokens:
            out["tokens"] = self.model.tokens(clip)
        return out


@torch.no_grad()
def extract(sets: Mapping[str, FeatureSet], source, views: int = 1, crops: int = 1, short_side: int = 0,
            batch_size: int = 64, num_workers: int = 0, device: torch.device | str = "cpu",
            decode_timeout_s: float = 0.0, isolate: bool = True, monitor=None, dataset: int = 0,
            stop: StopSignals | None = None, progress=None,
            ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """One pass over ``source``: ``({set: {key: (n, ...) float32}}, labels (n,), source indices (n,))`` of every
    sample that loads, each output the mean over the V evaluation views.

    A sample that fails to load is left out and handed to ``monitor`` (a
    :class:`~vmim.data.bad_files.BadFileMonitor`, as its dataset ``dataset``; by default one that only logs): its
    line once, remembered (known bad samples are not opened again), TooManyBadFiles past its threshold.
    ``isolate``: decode in a killable child (``data.decode_isolation``), with ``decode_timeout_s`` per sample.

    Raises:
        TooManyBadFiles: from ``monitor``.
        Interrupted: ``stop`` recorded a stop request (asked before every batch).
        RunError: no sample loaded.
    """
    from ..data.bad_files import BadFileMonitor, Failure
    from ..data.eval_views import build_test_loader

    if monitor is None:
        monitor, dataset = BadFileMonitor(["probe"], [len(source)], [0], 1.0, action="left out"), 0
    for fs in sets.values():
        model = getattr(fs, "model", None)
        if model is not None:
            model.eval()
    loader = build_test_loader(source, views, crops, short_side, batch_size, num_workers,
                               decode_timeout_s=decode_timeout_s, isolate=isolate,
                               known_bad=monitor.known_reasons(dataset))
    outs: dict[str, dict[str, list[np.ndarray]]] = {name: {} for name in sets}
    labels, indices = [], []
    batches = iter(loader)

    def stop_if_asked() -> None:
        if stop is not None and (request := stop.agreed()):
            raise Interrupted(f"{stop.signal_name} received: probe stopped while extracting features of "
                              f"'{monitor.names[dataset]}' ({sum(map(len, labels))} of {len(source)} samples); "
                              "nothing was written", request, stop.signal_name)

    try:
        while True:
            stop_if_asked()
            try:  # a stop also gives up a decode that hangs (a stalled file): one process, nothing to agree on
                batch = next_batch(batches, loader, stop)
            except WaitAbandoned:  # only once a stop was requested: said now
                stop_if_asked()
                raise
            if batch is None:
                break
            monitor.update([Failure(dataset, int(index), path, reason)
                            for index, (path, reason) in zip(batch["failed_index"], batch["failed"])])
            clips = batch["clips"]
            if len(clips):
                b, v = clips.shape[:2]
                flat = clips.flatten(0, 1).to(device)
                for name, fs in sets.items():
                    for key, value in fs(flat).items():
                        mean = value.float().reshape(b, v, *value.shape[1:]).mean(dim=1)
                        outs[name].setdefault(key, []).append(mean.cpu().numpy())
                labels.append(batch["label"].numpy())
                indices.append(batch["index"].numpy())
            if progress is not None:
                progress.update(len(clips) + len(batch["failed"]))
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # no worker outlives the pass, stopped or not
            shutdown()
        loader.dataset.dataset.close()  # the isolated decode child of this process (0 workers)
    if not labels:
        raise RunError(f"probe: no sample of '{monitor.names[dataset]}' loaded ({len(source)} tried)")
    return ({name: {key: np.concatenate(parts) for key, parts in by_key.items()} for name, by_key in outs.items()},
            np.concatenate(labels), np.concatenate(indices))


def extract_features(model, source, views: int = 1, crops: int = 1, short_side: int = 0, batch_size: int = 64,
                     num_workers: int = 0, device: torch.device | str = "cpu", decode_timeout_s: float = 0.0,
                     isolate: bool = True, monitor=None, dataset: int = 0, stop: StopSignals | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) pooled features (mean over the V = views x crops evaluation views) and (n,) labels of every sample of
    ``source`` that loads; ``model.features`` maps uint8 (N, C, T, S, S) to (N, D). :func:`extract` with one
    feature set."""
    feats, labels, _ = extract({"model": lambda clip: {"pooled": model.features(clip)}}, source, views, crops,
                               short_side, batch_size, num_workers, device, decode_timeout_s, isolate, monitor,
                               dataset, stop)
    return feats["model"]["pooled"], labels


def per_class_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples of each class (all of a class with fewer), drawn with ``seed``, in ascending order."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]))
