"""Torch-free schemas of the dataset kinds and their registration lines (builders: :mod:`vmim.data.build`), with the
choices of the file readers (index formats, video decoders, crops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from ..config.checks import Entry, _check, _check_seed, _choice
from ..config.registry import define_family, register

INDEX_FORMATS = ("space", "csv", "kinetics_csv", "ssv2", "ucf101", "hmdb51", "image_folder")
IMAGE_INDEX_FORMATS = ("space", "csv", "image_folder")
DECODERS = ("auto", "decord", "pyav")
CROPS = ("multi_scale", "random_resized")



@dataclass
class DatasetConfig(Entry):
    """What every dataset entry has; its kind adds its own keys."""

    kind: str = ""
    """A registered dataset kind; empty means the entry's key."""
    weight: float = 1.0
    """Passes over this dataset per epoch (a repeat factor; 0.5 = half of it each epoch)."""
    fraction: float = 1.0
    """Use this fraction of the list, stratified by label and fixed by ``subset_seed`` (low-label fine-tuning:
    0.1 = 10 % of the labels); 1 = all of it."""
    subset_seed: int = 0

    def check(self, key: str, cfg: Any) -> None:
        _check(self.weight > 0, f"{key}.weight", f"{self.weight} must be positive")
        _check(0 < self.fraction <= 1, f"{key}.fraction", f"{self.fraction} is outside (0, 1]")
        _check_seed(f"{key}.subset_seed", self.subset_seed)


@dataclass
class DigitsDatasetConfig(DatasetConfig):
    """Built-in scikit-learn digits: images (label = digit), bouncing clips (label = digit) or motion clips (label =
    the direction the digit moves, on a torus from a random start: one frame alone is at chance)."""

    split: str = "train"
    """train or test (a fixed stratified 80/20 split)."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _choice(f"{key}.split", self.split, ("train", "test"))


@dataclass
class DigitMotionDatasetConfig(DigitsDatasetConfig):
    """Built-in digits motion clips (label = the direction the digit steps, on a torus from a random start: one frame
    alone is at chance), with the step's size and rhythm."""

    speed: int = 3
    """Pixels per step (3: the video and MVD demos); not a multiple of half of data.img_size (left would be right)."""
    hold: int = 2
    """Frames per position: the digit steps every ``hold`` frames."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        size = cfg.data.img_size
        _check(self.speed > 0 and (2 * self.speed) % size != 0, f"{key}.speed",
               f"{self.speed} must be positive and not a multiple of half the {size} px canvas (data.img_size)")
        _check(self.hold > 0, f"{key}.hold", f"{self.hold} must be positive")


@dataclass
class FileDatasetConfig(DatasetConfig):
    """Files listed in an index (videos or images)."""

    format: str = "space"
    """Index format ('path label' lines, CSV, Kinetics CSV, SSv2 JSON, UCF101 / HMDB51 split files, an
    ImageFolder tree)."""
    path: str = ""
    """The list or annotation file (the image folder for image_folder)."""
    root: str = ""
    """Folder that relative paths in the list point into; empty = the list file's folder."""
    missing: str = "error"
    """Listed files that do not exist at start-up: error (stop, listing the first 10) or drop (report, go on)."""
    crop: str = ""
    """multi_scale (VideoMAE) or random_resized (MaskFeat, images); empty = multi_scale for video, random_resized
    for images."""
    crop_scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    """random_resized only: range of the crop's area as a fraction of the frame (MAE / FastMIM: [0.2, 1])."""
    flip: Optional[bool] = None
    """Random horizontal flip; None = on for images, off for video (never flip SSv2: labels have a direction)."""

    formats = INDEX_FORMATS

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _choice(f"{key}.format", self.format, self.formats)
        _check(bool(self.path), f"{key}.path", "a list / annotation file (or image folder) is required")
        _choice(f"{key}.missing", self.missing, ("error", "drop"))
        if self.crop:
            _choice(f"{key}.crop", self.crop, CROPS)
        _check(len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, f"{key}.crop_scale",
               f"{self.crop_scale} must be [low, high] with 0 < low <= high <= 1")
        _check(cfg.model.in_chans == 3, "model.in_chans",
               f"{cfg.model.in_chans} channels, but {key} reads video / image files, which are decoded as RGB "
               "(3 channels); other channel counts work with the built-in digits datasets only")


@dataclass
class VideoDatasetConfig(FileDatasetConfig):
    """Videos decoded with decord or PyAV."""

    labels: str = ""
    """ssv2: the labels JSON; ucf101: classInd.txt."""
    decoder: str = "decord"
    """decord, pyav, or auto (decord, falling back to PyAV for what decord cannot read, e.g. AV1)."""
    stride: int = 4
    """Source frames between sampled frames (K400: 4, SSv2: 2)."""
    target_fps: float = 0.0
    """Resample to this frame rate before striding; 0 keeps each video's own rate."""
    sampling: str = "window"
    """window: num_frames frames ``stride`` apart at a random start (VideoMAE, MaskFeat); segments: one random
    frame in each of num_frames equal segments of the whole video (TSN / SSv2 fine-tuning style)."""
    overflow: str = "loop"
    """A window longer than the video: loop it, or pad with the last frame."""
    split_number: int = 1
    """hmdb51: which official split (1-3) of the folder of split files (UCF101 picks it by its list file)."""
    partition: str = "train"
    """hmdb51: the split's train or test videos."""

    def check(self, key: str, cfg: Any) -> None:
        super().check(key, cfg)
        _choice(f"{key}.decoder", self.decoder, DECODERS)
        _check(self.stride >= 1, f"{key}.stride", f"{self.stride} must be >= 1")
        _check(self.target_fps >= 0, f"{key}.target_fps", f"{self.target_fps} must be >= 0")
        _choice(f"{key}.sampling", self.sampling, ("window", "segments"))
        _choice(f"{key}.overflow", self.overflow, ("loop", "pad"))
        _check(self.split_number in (1, 2, 3), f"{key}.split_number", f"{self.split_number} must be 1, 2 or 3")
        _choice(f"{key}.partition", self.partition, ("train", "test"))
        if self.format in ("ssv2", "ucf101"):
            _check(bool(self.labels), f"{key}.labels", f"format {self.format} needs its labels file")


@dataclass
class ImageDatasetConfig(FileDatasetConfig):
    """Images decoded with PIL (one-frame clips)."""

    formats = IMAGE_INDEX_FORMATS


define_family("datasets", "dataset")

_B = "vmim.data.build"
register("datasets", "digits_images", DigitsDatasetConfig, f"{_B}:_digit_images", info={"classes": 10, "image": True})
register("datasets", "digits_clips", DigitsDatasetConfig, f"{_B}:_digit_clips", info={"classes": 10})
register("datasets", "digits_motion", DigitMotionDatasetConfig, f"{_B}:_digit_motion", info={"classes": 4})
register("datasets", "video", VideoDatasetConfig, f"{_B}:_videos")
register("datasets", "image", ImageDatasetConfig, f"{_B}:_images", info={"image": True})
