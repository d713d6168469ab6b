"""Data: decoders, indexes, sources, the mixing sampler and the loader; dataset kinds' schemas in
:mod:`vmim.data.schemas`.

The package face is lazy (PEP 562): ``from vmim.data import build_sources`` imports :mod:`vmim.data.build` on
first use, so the torch-free schema module can be imported (config validation) without torch.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "DATASET_KINDS": "build", "build_source": "build", "build_sources": "build", "build_train_data": "build",
    "build_pretrain_data": "build", "BadFileMonitor": "bad_files", "Failure": "bad_files",
    "TooManyBadFiles": "bad_files", "DigitClips": "digits", "DigitImages": "digits", "DigitMotion": "digits",
    "PretrainData": "pretrain_data", "build_loader": "pretrain_data", "ClipSource": "pretrain_dataset",
    "MaskedClipDataset": "pretrain_dataset", "collate": "pretrain_dataset", "MixedBatchSampler": "sampler",
    "stage_size": "sampler",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
