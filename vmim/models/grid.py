"""The token grid of a patch-embedded input: the one place that turns an input shape into ``(T', H', W')``.

Every caller (backbones, targets, the data pipeline's mask generation, previews) asks :func:`token_grid`, so
they cannot disagree. Rule: ``T == 1`` is an image, repeated to the tubelet length before the patch embedding,
so it has one temporal token; otherwise T, H and W must be multiples of the patch size.
"""

from __future__ import annotations

from typing import Sequence

Grid = tuple[int, int, int]


def token_grid(shape: Sequence[int], patch_size: Sequence[int]) -> Grid:
    """Token grid ``(T', H', W')`` of an input of shape ``(..., T, H, W)`` for a ``(t, p, p)`` patch.

    Raises:
        ValueError: T (unless 1), H or W is not a multiple of the patch size.
    """
    t, h, w = (int(s) for s in shape[-3:])
    pt, ph, pw = (int(p) for p in patch_size)
    if (t % pt and t != 1) or h % ph or w % pw:
        raise ValueError(f"input {(t, h, w)} is not divisible by the patch size {(pt, ph, pw)} "
                         "(T = 1 is an image and always fits)")
    return max(t // pt, 1), h // ph, w // pw
