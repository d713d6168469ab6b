"""Real datasets as :class:`~vmim.data.pretrain_dataset.ClipSource`: video lists and image folders/lists.

A source is built in the main process from an index of :class:`~vmim.data.indexes.Entry` and opens files
only inside ``load`` (i.e. in data-loader workers). Decoders are created lazily per process.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .clip_sampling import frame_step, random_window, segment_indices
from .indexes import Entry
from .transforms import train_crop
from .video_decoders import build_decoder


class VideoSource:
    """Clips of ``num_frames`` frames ``stride`` apart (at ``target_fps`` if set), randomly cropped to ``size``."""

    modality = "video"

    def __init__(self, entries: list[Entry], num_frames: int, stride: int, size: int, decoder: str = "decord",
                 crop: str = "multi_scale", flip: bool = False, target_fps: float | None = None,
                 overflow: str = "loop", sampling: str = "window"):
        self.entries = entries
        self.sampling = sampling
        self.num_frames, self.stride, self.size = num_frames, stride, size
        self.decoder_name, self.crop, self.flip = decoder, crop, flip
        self.target_fps, self.overflow = target_fps, overflow
        self._decoder = None
        self._info: dict = {}

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return self.num_frames, self.size, self.size

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        return self.entries[index].path

    @property
    def decoder(self):
        if self._decoder is None:  # one per process: built in the worker that uses it
            self._decoder = build_decoder(self.decoder_name)
        return self._decoder

    def info(self, path: str):
        """VideoInfo, cached per process (a bounded dict): later clips of a file skip the probe."""
        if path not in self._info:
            if len(self._info) >= 4096:
                self._info.clear()
            self._info[path] = self.decoder.info(path)
        return self._info[path]

    def frame_indices(self, index: int, rng: np.random.Generator) -> np.ndarray:
        entry = self.entries[index]
        info = self.info(entry.path)
        step = frame_step(self.stride, info.fps, self.target_fps)
        first, count = 0, info.num_frames
        if entry.start_sec is not None and entry.end_sec is not None and info.fps > 0:  # trimmed segment
            first = min(int(entry.start_sec * info.fps), max(0, count - 1))
            count = max(1, min(count, int(entry.end_sec * info.fps)) - first)
        if self.sampling == "segments":
            return first + segment_indices(count, self.num_frames, rng)
        return first + random_window(count, self.num_frames, step, rng, self.overflow)

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.load_repeated(index, rng, 1)[0]

    def load_repeated(self, index: int, rng: np.random.Generator, repeat: int) -> list[tuple[torch.Tensor, int]]:
        """One decode of one window, ``repeat`` independent crops of it (VideoMAE V2's num_sample)."""
        frames = self.decoder.read(self.entries[index].path, self.frame_indices(index, rng).tolist())
        label = self.entries[index].label
        return [(train_crop(frames, self.size, rng, self.crop, self.flip), label) for _ in range(repeat)]


class ImageSource:
    """Images decoded with PIL, random-resized-cropped (+ flip) to ``size``, as one-frame clips."""

    modality = "image"

    def __init__(self, entries: list[Entry], size: int, crop: str = "random_resized", flip: bool = True):
        self.entries, self.size, self.crop, self.flip = entries, size, crop, flip

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return 1, self.size, self.size

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        return self.entries[index].path

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.load_repeated(index, rng, 1)[0]

    def load_repeated(self, index: int, rng: np.random.Generator, repeat: int) -> list[tuple[torch.Tensor, int]]:
        """One decode, ``repeat`` independent crops."""
        entry = self.entries[index]
        with Image.open(entry.path) as image:
            image.draft("RGB", (self.size * 2, self.size * 2))  # JPEG: decode at reduced scale when possible
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"))).unsqueeze(0)  # (1, H, W, 3)
        return [(train_crop(pixels, self.size, rng, self.crop, self.flip), entry.label) for _ in range(repeat)]
