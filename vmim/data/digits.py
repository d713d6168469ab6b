"""Built-in demo data that ships with the install: scikit-learn's handwritten digits.

* ``DigitImages``: each 8x8 digit upscaled to 3/4 of the canvas and placed at a random offset (training)
  or centred (test), as a one-frame clip.
* ``DigitClips``: the same digit moving in a straight line, bouncing off the canvas borders.
* ``DigitMotion``: a digit stepping on a torus (wrapping around the borders) in one of four directions from a uniformly
  random start; the label is the direction. Every frame's position is uniform whatever the direction and the digit is
  independent of it, so one frame alone carries no label information by construction: only motion does.

All return uint8 ``(C, T, H, W)`` clips (grey replicated over C) and a label; the split is a
fixed stratified 80/20 split, so the test part serves as held-out labeled data for probing and fine-tuning.
Evaluation (:meth:`test_views`) draws each view from a generator seeded by (index, view): fixed, like a file's views.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype(np.float32), data.target.astype(np.int64)


@lru_cache(maxsize=4)
def _split_indices(split: str) -> np.ndarray:
    _, labels = _digits()
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[: int(round(TEST_FRACTION * (labels == c).sum()))]
        for c in range(10)
    ])
    if split == "test":
        return np.sort(test)
    if split == "train":
        return np.setdiff1d(np.arange(len(labels)), test)
    raise ValueError(f"unknown split '{split}' (train or test)")


@lru_cache(maxsize=8)
def _glyphs(split: str, size: int) -> np.ndarray:
    """(n, size, size) float digits upscaled bilinearly, values in [0, 1]."""
    images, _ = _digits()
    x = torch.from_numpy(images[_split_indices(split)])[:, None]
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()


class _DigitsBase:
    modality: str

    def __init__(self, split: str = "train", img_size: int = 32, num_frames: int = 1, in_chans: int = 3):
        self.split = split
        self.img_size = self.size = img_size
        self.glyph_size = (3 * img_size) // 4
        self.num_frames = num_frames
        self.in_chans = in_chans
        self.labels = _digits()[1][_split_indices(split)]

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return self.num_frames, self.img_size, self.img_size

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        return f"{type(self).__name__}({self.split})[{index}]"

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def test_views(self, index: int, num_views: int = 1, num_crops: int = 1, short_side: int = 0
                   ) -> tuple[torch.Tensor, int]:
        """uint8 (num_views * num_crops, C, T, S, S), view-major: view k drawn from ``default_rng((index, k))``; the
        crops of a view are equal (the canvas is the frame: nothing to crop)."""
        clips = [self.load(index, np.random.default_rng((index, k)))[0] for k in range(num_views)]
        return torch.stack([c for c in clips for _ in range(num_crops)]), int(self.labels[index])

    def _render(self, glyph: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        """Paste the glyph at integer (row, col) positions, one per frame -> uint8 (C, T, H, W)."""
        frames = np.zeros((len(positions), self.img_size, self.img_size), dtype=np.float32)
        g = self.glyph_size
        for frame, (r, c) in zip(frames, positions):
            frame[r:r + g, c:c + g] = glyph
        clip = torch.from_numpy((frames * 255).round().astype(np.uint8))
        return clip[None].expand(self.in_chans, -1, -1, -1).contiguous()


class DigitImages(_DigitsBase):
    """One-frame clips of digits at a random (train) or centred (test, and every evaluation view) position."""

    modality = "image"

    def __init__(self, split: str = "train", img_size: int = 32, in_chans: int = 3, centered: bool | None = None):
        super().__init__(split, img_size, 1, in_chans)
        self.centered = split == "test" if centered is None else centered

    def load(self, index: int, rng: np.random.Generator | None) -> tuple[torch.Tensor, int]:
        slack = self.img_size - self.glyph_size
        pos = np.array([slack // 2] * 2) if self.centered or rng is None else rng.integers(0, slack + 1, size=2)
        return self._render(_glyphs(self.split, self.glyph_size)[index], pos[None]), int(self.labels[index])

    def test_views(self, index: int, num_views: int = 1, num_crops: int = 1, short_side: int = 0
                   ) -> tuple[torch.Tensor, int]:
        """The centred digit, (num_crops, C, 1, S, S)."""
        if num_views != 1:
            raise ValueError(f"images have one temporal view, got num_views={num_views}")
        clip, label = self.load(index, None)
        return clip.expand(num_crops, -1, -1, -1, -1).contiguous(), label


class DigitClips(_DigitsBase):
    """Clips of a digit moving at a random constant velocity, bouncing at the borders."""

    modality = "video"

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        slack = self.img_size - self.glyph_size
        start = rng.uniform(0, slack, size=2)
        velocity = rng.uniform(-2.0, 2.0, size=2)
        path = start[None] + velocity[None] * np.arange(self.num_frames)[:, None]
        path = np.abs((path + slack) % (2 * slack) - slack) if slack else path * 0  # reflect into [0, slack]
        return self._render(_glyphs(self.split, self.glyph_size)[index], path.round().astype(int)), int(
            self.labels[index])


MOTION_DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))
"""(row, col) unit steps of the motion labels 0..3: right, left, down, up."""


class DigitMotion(_DigitsBase):
    """Clips of a digit stepping ``speed`` pixels in one of four directions (the label) every ``hold`` frames, wrapping
    around the canvas, from a uniformly random start. Labels are a fixed balanced draw per split, independent of the
    digit.

    Every frame's position is uniform whatever the label, so one frame is at chance by construction. The digit holds
    still for ``hold`` frames (one tubelet of the demo's backbone) and moves between them, so no single token sees
    motion: the direction shows only by relating tokens across time, which is what masked video pretraining has to
    learn (a random-init backbone's pooled features are at chance on it, where a within-tubelet motion would be read
    off by the patch embedding alone).
    """

    modality = "video"
    speed = 3
    hold = 2

    def __init__(self, split: str = "train", img_size: int = 32, num_frames: int = 8, in_chans: int = 3,
                 speed: int | None = None, hold: int | None = None):
        """``speed`` (pixels per step) and ``hold`` (frames per position) default to the class values (3 and 2,
        the published demos' clips); a step of half the canvas would make opposite directions the same clip."""
        super().__init__(split, img_size, num_frames, in_chans)
        if speed is not None:
            if speed <= 0 or (2 * speed) % img_size == 0:
                raise ValueError(f"speed {speed} must be > 0 and not a multiple of half the canvas ({img_size} px)")
            self.speed = int(speed)
        if hold is not None:
            if hold <= 0:
                raise ValueError(f"hold {hold} must be > 0")
            self.hold = int(hold)
        n = len(self.labels)
        self.labels = np.random.default_rng((SPLIT_SEED, n)).permutation(np.arange(n) % len(MOTION_DIRECTIONS))

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        label = int(self.labels[index])
        glyph = np.zeros((self.img_size, self.img_size), dtype=np.float32)
        g = self.glyph_size
        glyph[:g, :g] = _glyphs(self.split, g)[index]
        start = rng.integers(0, self.img_size, size=2)
        step = np.array(MOTION_DIRECTIONS[label]) * self.speed
        frames = np.stack([np.roll(glyph, tuple(start + (t // self.hold) * step), axis=(0, 1))
                           for t in range(self.num_frames)])
        clip = torch.from_numpy((frames * 255).round().astype(np.uint8))
        return clip[None].expand(self.in_chans, -1, -1, -1).contiguous(), label
