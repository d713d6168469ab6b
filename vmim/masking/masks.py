"""Typed masks: what a masking hands to the data pipeline, and what a batch carries to the method.

Two types, one per side of the collate:

* :class:`SampleMasks`: one sample's masks as drawn (:func:`vmim.masking.draw_masks`), numpy arrays in the loader
  workers (the generators' contract) or tensors once the dataset has converted them;
* :class:`Masks`: a batch's, tensors with a leading batch dimension, built by the collate (:meth:`Masks.stack`,
  :meth:`Masks.cat`), moved to the device by the task (:meth:`Masks.to`) and read by the method, its token sets and
  its MAC count.

Fields, the same on both (True = masked, every sample of a batch hides the same count):

* ``encoder``: bool ``(N,)`` over the grid in (t, h, w) row-major order, or, with ``windows``, ``(K * w,)`` over
  the K windows' tokens, window-major;
* ``decoder``: bool ``(N,)``, the positions a decoder does not build (VideoMAE V2's running cell), or None;
* ``windows``: int64 ``(K, wt, wh, ww)``, the grid index of each window token (LoMaR), or None.

Decisions:

* **Named fields, not a string-keyed dict.** The roles are fixed (an encoder mask, an optional decoder mask, optional
  windows), so a typo is an AttributeError at the line that made it, and the layout a mask implies (grid or windows)
  is one property, :attr:`Masks.windowed`. The config still names roles by string (``MASK_SECTIONS``: ``encoder``,
  ``decoder``), and :meth:`SampleMasks.from_roles` is the one place those strings meet the fields.
* **torch is imported on use, not at module import**: ``vmim.masking`` is imported on the way to its torch-free
  ``schemas`` module whenever a config is validated, which must not import torch (``tests/test_preflight.py``).
* **A plain dataclass of tensors** pickles across DataLoader workers as it is. It is deliberately not a ``Mapping``:
  the DataLoader's pin-memory thread rebuilds mappings from a dict, but calls ``pin_memory()`` on any other object
  that defines it, which :class:`Masks` does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

ROLES = ("encoder", "decoder")
"""The mask roles a config may draw (``vmim.config.pretrain.MASK_SECTIONS``), in drawing order."""


def _values(masks: Any) -> tuple:
    """The fields' values in order (``dataclasses.astuple`` would deep-copy every tensor)."""
    return tuple(getattr(masks, f.name) for f in dataclasses.fields(masks))


def _tensor(array: Any) -> "torch.Tensor":
    import torch

    return torch.from_numpy(array) if isinstance(array, np.ndarray) else array


@dataclass(frozen=True)
class SampleMasks:
    """One sample's masks (module docstring): numpy arrays as drawn, or tensors after :meth:`torch`."""

    encoder: Any
    decoder: Any = None
    windows: Any = None

    @classmethod
    def from_roles(cls, drawn: dict[str, Any]) -> "SampleMasks":
        """From role -> drawn mask (``encoder`` / ``decoder``: a bool array, or a windowed mask with ``mask`` and
        ``windows``). KeyError for an unknown role; ValueError for windows on the decoder."""
        unknown = set(drawn) - set(ROLES)
        if unknown:
            raise KeyError(f"unknown mask role(s) {sorted(unknown)}; roles: {ROLES}")
        fields: dict[str, Any] = {}
        for role, mask in drawn.items():
            if hasattr(mask, "windows"):  # a WindowedMask: the mask over window tokens and their grid indices
                if role != "encoder":
                    raise ValueError(f"only the encoder mask may be windowed, not the {role} mask")
                fields[role], fields["windows"] = mask.mask, mask.windows
            else:
                fields[role] = mask
        return cls(**fields)

    def torch(self) -> "SampleMasks":
        """The same masks as tensors (numpy arrays are wrapped without a copy)."""
        return SampleMasks(*(None if a is None else _tensor(a) for a in _values(self)))


@dataclass(frozen=True)
class Masks:
    """A batch's masks: ``encoder`` bool ``(B, N)`` (or ``(B, K * w)`` with windows), ``decoder`` bool ``(B, N)`` or
    None, ``windows`` int64 ``(B, K, wt, wh, ww)`` or None (module docstring)."""

    encoder: torch.Tensor
    decoder: torch.Tensor | None = None
    windows: torch.Tensor | None = None

    @classmethod
    def stack(cls, samples: Sequence[SampleMasks]) -> "Masks":
        """Per-sample masks (numpy or tensors) -> the batch's, stacked along a new first dimension."""
        import torch

        first = samples[0]
        return cls(*(None if getattr(first, f) is None else torch.stack([_tensor(getattr(s, f)) for s in samples])
                     for f in ("encoder", "decoder", "windows")))

    @classmethod
    def cat(cls, batches: Sequence["Masks"]) -> "Masks":
        """Batches (e.g. each sample's repeated clips) -> one, concatenated along the batch dimension."""
        import torch

        first = batches[0]
        return cls(*(None if getattr(first, f) is None else torch.cat([getattr(b, f) for b in batches])
                     for f in ("encoder", "decoder", "windows")))

    @property
    def windowed(self) -> bool:
        """Whether the encoder runs over local windows (LoMaR) instead of the grid."""
        return self.windows is not None

    @property
    def slots(self) -> torch.Tensor | None:
        """int ``(B, K * w)``: the grid index of each encoder token slot with windows (window-major); None when the
        slots are the grid."""
        return None if self.windows is None else self.windows.flatten(1)

    def tensors(self) -> Iterator[torch.Tensor]:
        """The tensors present, in field order."""
        return (t for t in _values(self) if t is not None)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Masks":
        """``fn`` applied to every tensor present."""
        return Masks(*(None if t is None else fn(t) for t in _values(self)))

    def head(self, rows: int) -> "Masks":
        """The first ``rows`` samples."""
        return self.map(lambda t: t[:rows])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Masks":
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Masks":
        """Page-locked copies (the DataLoader's pin-memory thread calls this)."""
        return self.map(lambda t: t.pin_memory())
