"""What every probe reads: frozen features of a source through the evaluation transform (:func:`extract_features`,
with bad files left out and stop signals honoured, as the module docstring of :mod:`vmim.engine.probe` says), and the
per-class label draws of a low-label probe (:func:`per_class_subset`). Shared by the linear / k-NN probes and the
attentive probe (:mod:`vmim.engine.attentive_probe`)."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import RunError
from ..signals import WaitAbandoned
from .evaluate import next_batch
from .preemption import Interrupted, StopSignals


@torch.no_grad()
def extract_features(model, source, views: int = 1, crops: int = 1, short_side: int = 0, batch_size: int = 64,
                     num_workers: int = 0, device: torch.device | str = "cpu", decode_timeout_s: float = 0.0,
                     isolate: bool = True, monitor=None, dataset: int = 0, stop: StopSignals | None = None,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(n, D) pooled features (mean over the V = views x crops evaluation views) and (n,) labels of every sample of
    ``source`` that loads; ``model.features`` maps uint8 (N, C, T, S, S) to (N, D).

    A sample that fails to load is left out and handed to ``monitor`` (a
    :class:`~vmim.data.bad_files.BadFileMonitor`, as its dataset ``dataset``; by default one that only logs): its
    line once, remembered (known bad samples are not opened again), TooManyBadFiles past its threshold.
    ``isolate``: decode in a killable child (``data.decode_isolation``), with ``decode_timeout_s`` per sample.

    Raises:
        TooManyBadFiles: from ``monitor``.
        Interrupted: ``stop`` recorded a stop request (asked before every batch).
    """
    from ..data.bad_files import BadFileMonitor, Failure
    from ..data.eval_views import build_test_loader

    if monitor is None:
        monitor, dataset = BadFileMonitor(["probe"], [len(source)], [0], 1.0, action="left out"), 0
    model.eval()
    loader = build_test_loader(source, views, crops, short_side, batch_size, num_workers,
                               decode_timeout_s=decode_timeout_s, isolate=isolate,
                               known_bad=monitor.known_reasons(dataset))
    feats, labels = [], []
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
            if not len(clips):
                continue
            b, v = clips.shape[:2]
            out = model.features(clips.flatten(0, 1).to(device)).float().view(b, v, -1).mean(dim=1)
            feats.append(out.cpu().numpy())
            labels.append(batch["label"].numpy())
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # no worker outlives the pass, stopped or not
            shutdown()
        loader.dataset.dataset.close()  # the isolated decode child of this process (0 workers)
    if not feats:
        raise RunError(f"probe: no sample of '{monitor.names[dataset]}' loaded ({len(source)} tried)")
    return np.concatenate(feats), np.concatenate(labels)


def per_class_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples of each class (all of a class with fewer), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:n] for c in np.unique(labels)]))
