"""Real datasets as :class:`~vmim.data.pretrain_dataset.ClipSource`: video lists and image folders/lists.

A source is built in the main process from an index of :class:`~vmim.data.indexes.Entry` and opens files
only inside ``load`` (i.e. in data-loader workers). Decoders are created lazily per process. Loading is two
steps: ``read`` does all of the file reading (the part that can hang or crash, run in a killable child process)
and ``augment`` crops what it returned (run in the loader, overlapping the child's next read).

A video source refuses a file of one frame when a clip takes several (a still image in a video container, or a
broken encode): looping it would train on one picture repeated as a clip. It is a bad file like any other.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .clip_sampling import frame_step, random_window, segment_indices, uniform_views
from .indexes import Entry
from .transforms import test_crops, train_crop
from .video_decoders import DecodeError, build_decoder


class FileSource:
    """What video and image sources share: entries of files, ``load`` = :meth:`read` (all of the file reading, in a
    killable child process when data.decode_isolation is on) then :meth:`augment` (crops of what was read)."""

    reads_files = True
    entries: list[Entry]
    size: int
    crop: str
    flip: bool
    crop_scale: tuple[float, float]

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        return self.entries[index].path

    def read(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def augment(self, pixels: torch.Tensor, rng: np.random.Generator, repeat: int) -> list[torch.Tensor]:
        """``repeat`` independent training crops, uint8 (C, T, size, size), of the (T, H, W, C) pixels from
        :meth:`read`."""
        return [train_crop(pixels, self.size, rng, self.crop, self.flip, self.crop_scale) for _ in range(repeat)]

    def load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        return self.load_repeated(index, rng, 1)[0]

    def load_repeated(self, index: int, rng: np.random.Generator, repeat: int) -> list[tuple[torch.Tensor, int]]:
        """One read, ``repeat`` independent crops of it (VideoMAE V2's num_sample)."""
        pixels, label = self.read(index, rng)
        return [(clip, label) for clip in self.augment(pixels, rng, repeat)]


class VideoSource(FileSource):
    """Clips of ``num_frames`` frames ``stride`` apart (at ``target_fps`` if set), randomly cropped to ``size``
    (``crop_scale``: the area range of ``random_resized`` crops)."""

    modality = "video"

    def __init__(self, entries: list[Entry], num_frames: int, stride: int, size: int, decoder: str = "decord",
                 crop: str = "multi_scale", flip: bool = False, target_fps: float | None = None,
                 overflow: str = "loop", sampling: str = "window", crop_scale: tuple[float, float] = (0.2, 1.0)):
        self.entries = entries
        self.crop_scale = tuple(crop_scale)
        self.sampling = sampling
        self.num_frames, self.stride, self.size = num_frames, stride, size
        self.decoder_name, self.crop, self.flip = decoder, crop, flip
        self.target_fps, self.overflow = target_fps, overflow
        self._decoder = None
        self._info: dict = {}

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return self.num_frames, self.size, self.size

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

    def span(self, index: int) -> tuple[int, int, float]:
        """(first frame, frame count, step between clip frames) of entry ``index``: its trimmed segment if any."""
        entry = self.entries[index]
        info = self.info(entry.path)
        if info.num_frames < 2 <= self.num_frames:
            raise DecodeError(entry.path, f"not a video: {info.num_frames} frame, and a clip takes {self.num_frames}")
        step = frame_step(self.stride, info.fps, self.target_fps)
        first, count = 0, info.num_frames
        if entry.start_sec is not None and entry.end_sec is not None and info.fps > 0:  # trimmed segment
            first = min(int(entry.start_sec * info.fps), max(0, count - 1))
            count = max(1, min(count, int(entry.end_sec * info.fps)) - first)
        return first, count, step

    def frame_indices(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """(T,) frame indices of one training clip: a random window, or random frames of the segments."""
        first, count, step = self.span(index)
        if self.sampling == "segments":
            return first + segment_indices(count, self.num_frames, rng)
        return first + random_window(count, self.num_frames, step, rng, self.overflow)

    def view_indices(self, index: int, num_views: int) -> list[np.ndarray]:
        """``num_views`` (T,) frame-index arrays for testing: evenly spread windows, or segment frames at
        offsets ``(k + 0.5) / num_views`` within each segment."""
        first, count, step = self.span(index)
        if self.sampling == "segments":
            return [first + segment_indices(count, self.num_frames, None, (k + 0.5) / num_views)
                    for k in range(num_views)]
        return [first + view for view in uniform_views(count, self.num_frames, step, num_views, self.overflow)]

    def test_views(self, index: int, num_views: int, num_crops: int, short_side: int = 0) -> tuple[torch.Tensor, int]:
        """uint8 (num_views * num_crops, C, T, size, size), view-major, and the label. One decode of the sorted
        union of all views' frames; ``short_side`` 0 = ``size`` (VideoMAE / SlowFast 3-crop testing)."""
        entry = self.entries[index]
        views = self.view_indices(index, num_views)
        union = np.unique(np.concatenate(views))
        frames = self.decoder.read(entry.path, union.tolist())  # (len(union), H, W, C)
        short_side = short_side or self.size
        clips = [test_crops(frames[torch.from_numpy(np.searchsorted(union, view))], short_side, self.size, num_crops)
                 for view in views]
        return torch.cat(clips), entry.label

    def read(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """uint8 (T, H, W, C) frames of one training window, and the label: all of the file reading."""
        frames = self.decoder.read(self.entries[index].path, self.frame_indices(index, rng).tolist())
        return frames, self.entries[index].label


class ImageSource(FileSource):
    """Images decoded with PIL, random-resized-cropped (area fraction in ``crop_scale``) + flip to ``size``, as
    one-frame clips."""

    modality = "image"

    def __init__(self, entries: list[Entry], size: int, crop: str = "random_resized", flip: bool = True,
                 crop_scale: tuple[float, float] = (0.2, 1.0)):
        self.entries, self.size, self.crop, self.flip = entries, size, crop, flip
        self.crop_scale = tuple(crop_scale)

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        return 1, self.size, self.size

    def read(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, int]:
        """uint8 (1, H, W, 3) pixels (JPEG draft-decoded to at least twice ``size``) and the label."""
        return self.pixels(index, self.size * 2), self.entries[index].label

    def pixels(self, index: int, min_side: int) -> torch.Tensor:
        """uint8 (1, H, W, 3) RGB. JPEGs decode at a reduced scale (PIL ``draft``) that keeps both sides >= ``min_side``
        (unless the image is smaller), so a later resize to ``min_side`` never upsamples what was downscaled."""
        with Image.open(self.entries[index].path) as image:
            image.draft("RGB", (min_side, min_side))
            return torch.from_numpy(np.array(image.convert("RGB"))).unsqueeze(0)  # a writable copy: no torch warning

    def test_views(self, index: int, num_views: int = 1, num_crops: int = 1, short_side: int = 0
                   ) -> tuple[torch.Tensor, int]:
        """uint8 (num_crops, C, 1, size, size) and the label. ``short_side`` 0 = ``round(size / 0.875)`` (256 for
        224: ImageNet's resize-256 / centre-224), except for an image whose short side is at most ``size``: it is
        resized to ``size`` and kept whole (a 28-px digit for a 28-px model is not zoomed to 32 and cut back to 28);
        ``num_views`` must be 1."""
        if num_views != 1:
            raise ValueError(f"images have one temporal view, got num_views={num_views}")
        pixels = self.pixels(index, short_side or round(self.size / 0.875))
        if not short_side:
            short_side = self.size if min(pixels.shape[1:3]) <= self.size else round(self.size / 0.875)
        return test_crops(pixels, short_side, self.size, num_crops), self.entries[index].label
