"""Which frame indices make a clip: a random window (training), K uniform views (testing), TSN segments (SSv2).

All functions return int64 numpy arrays of frame indices into a video of ``num_video_frames`` frames. A
clip longer than the video is looped or padded with the last frame, as ``overflow`` says. ``step`` is
the distance between sampled frames in source frames: the stride, times source fps / target fps when
the video is resampled to a target rate (a float step, rounded per frame).
"""

from __future__ import annotations

import numpy as np

OVERFLOW = ("loop", "pad")


def frame_step(stride: int, video_fps: float, target_fps: float | None) -> float:
    """Source frames between two clip frames: ``stride`` at the video's rate, rescaled to ``target_fps``."""
    if not target_fps or video_fps <= 0:
        return float(stride)
    return stride * video_fps / target_fps


def _fit(indices: np.ndarray, num_video_frames: int, overflow: str) -> np.ndarray:
    if overflow == "loop":
        return indices % num_video_frames
    if overflow == "pad":
        return np.minimum(indices, num_video_frames - 1)
    raise ValueError(f"overflow must be one of {OVERFLOW}, got '{overflow}'")


def window(start: float, num_frames: int, step: float) -> np.ndarray:
    return np.round(start + step * np.arange(num_frames)).astype(np.int64)


def random_window(num_video_frames: int, num_frames: int, step: float, rng: np.random.Generator,
                  overflow: str = "loop") -> np.ndarray:
    """A window of ``num_frames`` frames ``step`` apart at a uniformly random start."""
    span = step * (num_frames - 1) + 1
    start = rng.uniform(0, num_video_frames - span) if num_video_frames > span else 0.0
    return _fit(window(start, num_frames, step), num_video_frames, overflow)


def uniform_views(num_video_frames: int, num_frames: int, step: float, num_views: int,
                  overflow: str = "loop") -> list[np.ndarray]:
    """``num_views`` windows with evenly spaced starts covering the video (multi-view testing)."""
    span = step * (num_frames - 1) + 1
    room = max(0.0, num_video_frames - span)
    starts = [room * (k + 0.5) / num_views for k in range(num_views)] if num_views > 1 else [room / 2]
    return [_fit(window(s, num_frames, step), num_video_frames, overflow) for s in starts]


def segment_indices(num_video_frames: int, num_segments: int, rng: np.random.Generator | None,
                    offset: float | None = None) -> np.ndarray:
    """TSN / SSv2 sampling: one frame per equal segment, at a random place in it (training, ``rng``) or at fraction
    ``offset`` of it (testing; None: the middle, 0.5). K test views use offsets ``(k + 0.5) / K``."""
    if offset is not None and not 0.0 <= offset < 1.0:
        raise ValueError(f"segment offset must be in [0, 1), got {offset}")
    edges = np.linspace(0, num_video_frames, num_segments + 1)
    if rng is not None:
        fraction = rng.uniform(0, 1, num_segments)
    else:
        fraction = 0.5 if offset is None else offset
    picks = edges[:-1] + fraction * (edges[1:] - edges[:-1])
    return np.minimum(np.floor(picks).astype(np.int64), num_video_frames - 1)
