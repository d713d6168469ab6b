"""Spatial augmentation on uint8 clips ``(T, H, W, C)``, one crop box for every frame of a clip.

Training crops are drawn from a numpy Generator (the per-sample seed), resized with antialiased bilinear
interpolation, and returned as uint8 ``(C, T, size, size)``. Normalization happens later, on the device.
Test-time crops (:func:`test_crops`) are the fixed 1-crop / 3-crop boxes of multi-view evaluation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

Box = tuple[int, int, int, int]  # top, left, height, width

MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


def random_resized_box(h: int, w: int, rng: np.random.Generator, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> Box:
    """torchvision's RandomResizedCrop box (10 tries, then the central crop of the clamped ratio)."""
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif aspect > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def multi_scale_box(h: int, w: int, rng: np.random.Generator, scales=MULTI_SCALES, max_distort: int = 1) -> Box:
    """VideoMAE's GroupMultiScaleCrop: side lengths from ``scales`` x the short side (at most ``max_distort``
    scale steps apart), placed at one of 13 fixed positions (corners, centre, quarter points)."""
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    pairs = [(ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= max_distort]
    ch, cw = pairs[rng.integers(len(pairs))]
    ys, xs = (h - ch) / 4, (w - cw) / 4
    offsets = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4), (1, 1), (1, 3), (3, 1), (3, 3)]
    oy, ox = offsets[rng.integers(len(offsets))]
    return int(oy * ys), int(ox * xs), ch, cw


def short_side_box(h: int, w: int, short_side: int, crop: int, position: float = 0.5) -> Box:
    """Box of a ``crop`` square after resizing the short side to ``short_side``, in source pixels: at ``position``
    along the long side (0 start, 0.5 centre, 1 end; the width when square), centred along the short side."""
    side = crop * min(h, w) / short_side
    ch, cw = min(h, int(round(side))), min(w, int(round(side)))
    top, left = (h - ch) // 2, (w - cw) // 2
    if h > w:
        top = int((h - ch) * position)
    else:
        left = int((w - cw) * position)
    return top, left, ch, cw


def center_box(h: int, w: int, short_side: int, crop: int) -> Box:
    """Box of a ``crop`` centre crop after resizing the short side to ``short_side``, in source pixels."""
    return short_side_box(h, w, short_side, crop)


def crop_resize(frames: torch.Tensor, box: Box, size: int, flip: bool = False) -> torch.Tensor:
    """uint8 (T, H, W, C) -> crop ``box`` -> resize to size x size -> optional horizontal flip -> uint8
    (C, T, size, size)."""
    top, left, ch, cw = box
    x = frames[:, top:top + ch, left:left + cw].permute(0, 3, 1, 2)  # (T, C, h, w), channels-last in memory
    if (ch, cw) != (size, size):  # uint8 in, uint8 out: PyTorch's vectorized path, ~14x faster than via float32
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    if flip:
        x = x.flip(-1)
    return x.permute(1, 0, 2, 3).contiguous()


def resize_clip(clip: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (C, T, H, W) -> uint8 (C, T, size, size), antialiased bilinear (progressive resolution's stage size;
    the same resampling as :func:`crop_resize`)."""
    if clip.shape[-2:] == (size, size):
        return clip
    x = clip.permute(1, 0, 2, 3)  # (T, C, H, W)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(1, 0, 2, 3).contiguous()


def train_crop(frames: torch.Tensor, size: int, rng: np.random.Generator, kind: str, flip: bool,
               scale: tuple[float, float] = (0.2, 1.0)) -> torch.Tensor:
    """Training augmentation: ``kind`` is ``multi_scale`` (VideoMAE) or ``random_resized`` (MaskFeat, images; the box
    covers a ``scale`` fraction of the frame's area)."""
    _, h, w, _ = frames.shape
    if kind == "multi_scale":
        box = multi_scale_box(h, w, rng)
    elif kind == "random_resized":
        box = random_resized_box(h, w, rng, scale=tuple(scale))
    else:
        raise ValueError(f"unknown crop '{kind}' (multi_scale or random_resized)")
    return crop_resize(frames, box, size, flip=flip and bool(rng.integers(2)))


TEST_CROP_POSITIONS = {1: (0.5,), 3: (0.0, 0.5, 1.0)}  # SlowFast / VideoMAE spatial_idx 0, 1, 2 for 3 crops


def test_boxes(h: int, w: int, short_side: int, crop: int, num_crops: int) -> list[Box]:
    """Test-time boxes, in source pixels, of "resize the short side to ``short_side``, take ``num_crops`` crops of
    ``crop`` x ``crop``": 1: the centre; 3: start, centre, end of the long side (left/centre/right or
    top/centre/bottom), centred along the short side."""
    if num_crops not in TEST_CROP_POSITIONS:
        raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
    if not 0 < crop <= short_side:
        raise ValueError(f"crop must be in 1..short_side={short_side}, got crop={crop}")
    return [short_side_box(h, w, short_side, crop, p) for p in TEST_CROP_POSITIONS[num_crops]]


def test_crops(frames: torch.Tensor, short_side: int, crop: int, num_crops: int) -> torch.Tensor:
    """uint8 (T, H, W, C) -> the :func:`test_boxes` crops resized to ``crop`` -> uint8 (num_crops, C, T, crop, crop)."""
    _, h, w, _ = frames.shape
    return torch.stack([crop_resize(frames, box, crop) for box in test_boxes(h, w, short_side, crop, num_crops)])


test_boxes.__test__ = test_crops.__test__ = False  # library functions: pytest must not collect them when imported
