"""Video decoders that return exactly the frames asked for, as uint8 ``(T, H, W, 3)`` RGB tensors, upright.

Which decoder when:

* ``AutoDecoder`` (``"auto"``, the usual choice): decord first, PyAV when decord raises DecodeError (no AV1 in
  decord, AVI with B-frames, files decord cannot open).
* ``DecordDecoder`` (``"decord"``): decord 0.6 with its bundled FFmpeg 4.1. H.264, HEVC, VP9, MPEG-4; no AV1;
  unmaintained, no wheels for macOS arm64. It demuxes the whole file on open (to index keyframes and timestamps).
* ``PyAVDecoder`` (``"pyav"``): PyAV with its bundled, recent FFmpeg: every codec FFmpeg has (AV1 included), cheap
  to open, within ~30 % of decord's speed elsewhere (``../shared/research/dependency-stack.md`` §5).

"Decode only the frames needed" means:

* decord: ``get_batch`` on the sorted unique indices; decord seeks to the keyframe before each requested frame that
  is not reachable by decoding forward, and skips (decodes without converting) the frames in between.
* PyAV: one seek to the keyframe at or before the first requested index, then decoding forward and stopping at the
  last requested index. Frames in between are decoded (inter frames need them); only requested ones become RGB.
  Indices far apart in one call therefore decode everything between them.

Frame indices: decord numbers frames by rank of packet timestamp. PyAV gives frame ``i`` the frame nearest to time
``start + i / fps`` (``fps``: average rate), computed from each decoded frame's pts as ``(pts - start) * time_base
* fps``, ties to the earlier frame. For constant frame rate both are the i-th frame; with gaps in the timestamps
(variable frame rate, dropped frames) PyAV keeps to the time grid (an index without a frame of its own gets the
nearest one) while decord's i-th frame drifts later in time.

Rotation: ``VideoInfo.rotation`` is the clockwise turn (0, 90, 180 or 270 degrees) that shows the stored frames
upright: the legacy ``rotate`` tag, or minus FFmpeg's (counterclockwise) display-matrix angle; a phone's portrait
clip is stored landscape with rotation 90. Frames come back already turned (``rotate_upright`` in PyAV; decord 0.6
applies the same metadata itself), so height and width are swapped for 90 and 270, while ``VideoInfo.width`` and
``height`` are the stored size. Flips in the display matrix are ignored.

Not a video: FFmpeg opens a still image renamed ``.mp4`` (PNG, JPEG, BMP, TIFF, WebP, ...) as a one-frame video
through an image demuxer (``png_pipe``, ``image2``, ...), and training would then see one picture repeated as a
clip. Every decoder raises :class:`NotAVideo` for a file read by an image demuxer or without a video stream (decord
asks PyAV why it could not open a file, or why it found a single frame); ``auto`` does not try its second decoder
then. A one-frame file of a real video codec is a video here; the source rejects it when a clip needs more frames.

Every failure raises ``DecodeError(path, reason)``, never a decord or av exception. Decoders keep no state between
calls and can be created inside DataLoader workers; use one decode thread per worker (the default). FFmpeg's own
messages (PyAV logs nothing unless asked; decord prints) are kept off the terminal by the loader
(:mod:`vmim.data.stderr_capture`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, Sequence, runtime_checkable

import av
import numpy as np
import torch

from .schemas import DECODERS as DECODERS  # the config's choices



class DecodeError(RuntimeError):
    """A video could not be opened or decoded (or a requested frame does not exist)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class NotAVideo(DecodeError):
    """The file is something else than a video (a still image, no video stream): no other decoder will do better."""


IMAGE_DEMUXERS = ("image2", "image2pipe")  # and every "<codec>_pipe" demuxer: png_pipe, jpeg_pipe, bmp_pipe, ...


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int  # as stored, before rotation
    height: int
    rotation: int  # clockwise degrees that display the stored frames upright: 0, 90, 180 or 270


@runtime_checkable
class VideoDecoder(Protocol):
    name: str

    def info(self, path: str) -> VideoInfo:
        """Frame count, frame rate, stored size and rotation."""
        ...

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (T, H, W, 3) RGB frames at ``indices`` (any order, duplicates allowed), rotated upright."""
        ...


# ------------------------------------------------------------------------------------------------------ shared helpers


def rotate_upright(frames: torch.Tensor, rotation: int) -> torch.Tensor:
    """Rotate (T, H, W, C) frames clockwise by ``rotation`` degrees (a multiple of 90) -> (T, H', W', C)."""
    quarter_turns = (int(rotation) // 90) % 4
    if quarter_turns == 0:
        return frames
    return torch.rot90(frames, k=-quarter_turns, dims=(1, 2)).contiguous()  # negative k: clockwise


def _clockwise_rotation(counterclockwise_degrees: float) -> int:
    """Display-matrix angle (counterclockwise, FFmpeg's convention) -> clockwise quarter turns in degrees."""
    return int(round(-counterclockwise_degrees / 90.0)) % 4 * 90


def _check_indices(path: str, indices: Sequence[int]) -> list[int]:
    idx = [int(i) for i in indices]
    if any(i < 0 for i in idx):
        raise DecodeError(path, f"negative frame index in {idx}")
    return idx


def _check_file(path: str) -> str:
    path = os.fspath(path)
    if not os.path.exists(path) or os.path.isdir(path):  # not isfile: a pipe or device is read like a file
        raise DecodeError(path, "no such file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)")
    return path


def _past_end(path: str, index: int, num_frames: int) -> DecodeError:
    return DecodeError(path, f"frame {index} requested but only {num_frames} frames decode")


def _short(message: object) -> str:
    """First informative line of a library error message, without decord's '[time] file.cc:line:' prefix."""
    if isinstance(message, av.FFmpegError) and message.strerror:
        return str(message.strerror)[:200]
    lines = [line.strip() for line in str(message).splitlines() if line.strip() and "Stack trace" not in line]
    text = re.sub(r"^\[[\d:]+\]\s+\S+:\d+:\s*", "", lines[0]) if lines else type(message).__name__
    return text[:200]


# ----------------------------------------------------------------------------------------------------------- PyAV


def _open(path: str) -> av.container.InputContainer:
    path = _check_file(path)
    try:
        return av.open(path, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DecodeError(path, f"not a readable video file ({_short(e)})") from e


def _image_demuxer(container: av.container.InputContainer) -> str | None:
    """The name of FFmpeg's demuxer when it is one for still images, else None."""
    names = (container.format.name or "").split(",")
    return next((n for n in names if n in IMAGE_DEMUXERS or n.endswith("_pipe")), None)


def _video_stream(container: av.container.InputContainer, path: str) -> av.video.stream.VideoStream:
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        raise NotAVideo(path, "not a video: no video stream")
    stream = streams[0]
    if (demuxer := _image_demuxer(container)) is not None:
        kind = demuxer[:-len("_pipe")] if demuxer.endswith("_pipe") else getattr(stream.codec_context, "name", "")
        raise NotAVideo(path, f"not a video: a still {kind} image (FFmpeg's {demuxer} demuxer opens it)")
    if stream.codec_context is None:
        raise DecodeError(path, f"no decoder for codec '{stream.codec.name if stream.codec else 'unknown'}'")
    return stream


def _fps(stream: av.video.stream.VideoStream, path: str) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate or rate <= 0:
        raise DecodeError(path, "unknown frame rate")
    return Fraction(rate)


class _Clock:
    """Timestamp <-> frame position for one stream: ``(pts - start) * time_base * fps``, in frames.

    ``start`` is the first packet's pts, or the stream's start time if that is later (packets an edit list drops).
    It is not just the start time: AVI with B-frames starts at 0 while its first frame shows at pts 1.
    """

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str):
        self.fps = _fps(stream, path)
        self.time_base = Fraction(stream.time_base or Fraction(1, 1))
        first = next((p.pts for p in _demux(container, stream) if p.pts is not None), None)
        starts = [t for t in (stream.start_time, first) if t is not None]
        self.start = max(starts) if starts else 0
        _seek(container, stream, self.start, path)  # back to the beginning

    def position(self, pts: int) -> Fraction:
        return (pts - self.start) * self.time_base * self.fps

    def index(self, pts: int) -> int:
        return max(0, round(self.position(pts)))

    def pts(self, index: int) -> int:
        return self.start + int(Fraction(index) / (self.fps * self.time_base))


def _seek(container: av.container.InputContainer, stream: av.video.stream.VideoStream, pts: int, path: str) -> None:
    """Seek to the keyframe at or before ``pts`` (PyAV flushes the decoder)."""
    try:
        container.seek(pts, backward=True, any_frame=False, stream=stream)
    except av.FFmpegError as e:
        raise DecodeError(path, f"seeking failed ({_short(e)})") from e


def _demux(container: av.container.InputContainer, stream: av.video.stream.VideoStream):
    """Packets of ``stream`` that carry data and were read whole; stops quietly where a damaged file ends."""
    try:
        for packet in container.demux(stream):
            if packet.size > 0 and not packet.is_corrupt:
                yield packet
    except av.FFmpegError:  # truncated or damaged past this point
        return


def _decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: str):
    """Decoded frames of ``stream`` in presentation order, from the current position to the end (decoder flushed)."""
    try:
        for packet in _demux(container, stream):
            yield from stream.decode(packet)
        yield from stream.decode(None)
    except av.FFmpegError as e:
        raise DecodeError(path, f"decoding failed ({_short(e)})") from e


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 path: str) -> av.VideoFrame:
    frame = next(_decode(container, stream, path), None)
    if frame is None:
        raise DecodeError(path, f"no frame of the {_codec_name(stream)} stream decodes")
    return frame


def _rotation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> int:
    """Clockwise rotation from the frame's display matrix, else from a legacy ``rotate`` stream tag."""
    if frame.rotation:
        return _clockwise_rotation(frame.rotation)
    try:
        return _clockwise_rotation(-float(stream.metadata.get("rotate", 0)))
    except ValueError:
        return 0


def _codec_name(stream: av.video.stream.VideoStream) -> str:
    """The codec (e.g. 'av1'), not the decoder that PyAV picked for it (e.g. 'libdav1d')."""
    codec = stream.codec_context.codec
    return getattr(codec, "canonical_name", None) or codec.name


def _last_index(container: av.container.InputContainer, stream: av.video.stream.VideoStream, clock: _Clock,
                from_index: int) -> int | None:
    """Largest frame index among the packets from the keyframe before ``from_index`` to the end (None: no packet)."""
    try:
        container.seek(clock.pts(from_index), backward=True, any_frame=False, stream=stream)
    except av.FFmpegError:
        return None
    indices = [clock.index(p.pts if p.pts is not None else p.dts) for p in _demux(container, stream)
               if p.pts is not None or p.dts is not None]
    return max(indices) if indices else None


def _count_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream, clock: _Clock,
                  path: str) -> int:
    """Number of frames the file really holds, from packet timestamps (demuxing only, no decoding).

    The header's count (``stream.frames``, or duration times fps where there is none, as in WebM/MKV) only says
    where the end should be: demux from the keyframe before that point to the end of the file and take the last
    packet's index. If that finds nothing (the header points past a truncated end), demux the whole file.
    """
    expected = stream.frames
    if expected <= 0 and stream.duration:
        expected = int(stream.duration * clock.time_base * clock.fps)
    if expected <= 0 and container.duration:
        expected = int(Fraction(container.duration, av.time_base) * clock.fps)
    last = _last_index(container, stream, clock, max(expected - 1, 0)) if expected > 0 else None
    if last is None:
        last = _last_index(container, stream, clock, 0)
    if last is None:
        raise DecodeError(path, "no video packets")
    return last + 1


def _check_video(path: str) -> None:
    """Raise NotAVideo when PyAV finds a still image or no video stream; any other trouble is left to the caller."""
    try:
        with av.open(path, metadata_errors="ignore") as container:
            _video_stream(container, path)
    except NotAVideo:
        raise
    except (av.FFmpegError, OSError, ValueError, DecodeError):
        pass


def _probe(path: str) -> tuple[str, int, int, int]:
    """(codec, stored width, stored height, clockwise rotation) with PyAV, decoding the first frame."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        frame = _first_frame(container, stream, path)
        return _codec_name(stream), frame.width, frame.height, _rotation(frame, stream)


class _Overshoot(Exception):
    """The seek landed after the first wanted frame (containers that index keyframes by dts, e.g. AVI)."""

    def __init__(self, first_index: int):
        self.first_index = first_index


def _collect(frames, stream: av.video.stream.VideoStream, clock: _Clock, wanted: list[int], path: str,
             from_start: bool) -> tuple[dict[int, np.ndarray], int]:
    """Pick the ``wanted`` (sorted, unique) indices out of decoded ``frames``, converting only those to RGB.

    Each index gets the frame nearest in time (ties: the earlier one), which for constant frame rate is the frame
    with exactly that index. Returns ({index: (H, W, 3) uint8}, clockwise rotation); raises _Overshoot when the first
    frame is already past ``wanted[0]`` and decoding did not start at the beginning.
    """
    got: dict[int, np.ndarray] = {}
    rotation, k = 0, 0
    previous, previous_rgb, previous_x = None, None, Fraction(-1)
    for frame in frames:
        x = clock.position(frame.pts) if frame.pts is not None else previous_x + 1
        if previous is None:
            rotation = _rotation(frame, stream)
            if x > wanted[0] and not from_start:
                raise _Overshoot(round(x))
        rgb = None
        while k < len(wanted) and wanted[k] <= x:
            if previous is not None and wanted[k] - previous_x <= x - wanted[k]:
                previous_rgb = previous.to_ndarray(format="rgb24") if previous_rgb is None else previous_rgb
                got[wanted[k]] = previous_rgb
            else:
                rgb = frame.to_ndarray(format="rgb24") if rgb is None else rgb
                got[wanted[k]] = rgb
            k += 1
        if k == len(wanted):
            return got, rotation
        previous, previous_rgb, previous_x = frame, rgb, x
    if previous is None:
        raise DecodeError(path, f"no frame decodes at or after index {wanted[0]}")
    num_frames = max(0, round(previous_x)) + 1
    if wanted[-1] >= num_frames:
        raise _past_end(path, wanted[-1], num_frames)
    previous_rgb = previous.to_ndarray(format="rgb24") if previous_rgb is None else previous_rgb
    got.update({i: previous_rgb for i in wanted[k:]})  # within half a frame after the last one
    return got, rotation


class PyAVDecoder:
    """PyAV: seek to the keyframe before the first index, decode forward to the last, map frames by timestamp.

    ``num_threads``: FFmpeg decode threads (0: FFmpeg's choice, one per core); ``thread_type`` ("AUTO", "FRAME",
    "SLICE") only matters with more than one thread.
    """

    name = "pyav"

    def __init__(self, thread_type: str = "AUTO", num_threads: int = 1):
        self.thread_type = thread_type
        self.num_threads = num_threads

    def _setup(self, container: av.container.InputContainer, path: str) -> tuple[av.video.stream.VideoStream, _Clock]:
        stream = _video_stream(container, path)
        stream.thread_type = self.thread_type
        stream.thread_count = self.num_threads
        return stream, _Clock(container, stream, path)

    def info(self, path: str) -> VideoInfo:
        """Header values; ``num_frames`` from packet timestamps (see ``_count_frames``), so a wrong header is fixed."""
        with _open(path) as container:
            stream, clock = self._setup(container, path)
            frame = _first_frame(container, stream, path)
            num_frames = _count_frames(container, stream, clock, path)
            return VideoInfo(num_frames, float(clock.fps), frame.width, frame.height, _rotation(frame, stream))

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(path, indices)
        with _open(path) as container:
            stream, clock = self._setup(container, path)
            if not idx:
                frame = _first_frame(container, stream, path)
                empty = torch.empty(0, frame.height, frame.width, 3, dtype=torch.uint8)
                return rotate_upright(empty, _rotation(frame, stream))
            frames, rotation = self._decode_wanted(container, stream, clock, sorted(set(idx)), path)
        return rotate_upright(torch.from_numpy(np.stack([frames[i] for i in idx])), rotation)

    def _decode_wanted(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                       clock: _Clock, wanted: list[int], path: str) -> tuple[dict[int, np.ndarray], int]:
        """Seek before ``wanted[0]`` (further back after each overshoot), decode forward, collect."""
        target = wanted[0]
        while True:
            if target > 0:
                _seek(container, stream, clock.pts(target), path)
            try:  # at target 0 the clock left the demuxer at the start
                return _collect(_decode(container, stream, path), stream, clock, wanted, path, from_start=target == 0)
            except _Overshoot as e:
                target = max(0, target - 2 * max(1, e.first_index - wanted[0]))
                if target == 0:
                    _seek(container, stream, clock.start, path)


# ---------------------------------------------------------------------------------------------------------- decord


def _to_tensor(batch: object) -> torch.Tensor:
    """decord output -> torch tensor, whichever bridge is set (pytorchvideo switches it to torch globally)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if hasattr(batch, "asnumpy"):
        return torch.from_numpy(batch.asnumpy())
    return torch.as_tensor(np.asarray(batch))


class DecordDecoder:
    """decord ``VideoReader.get_batch`` on the sorted unique indices, re-expanded to the requested order.

    decord numbers frames by rank of packet pts (it demuxes the whole file on open) and applies the rotation
    metadata itself (``rotate`` tag or display matrix, same clockwise convention), so ``read`` opens only decord.
    ``info`` also probes the file with PyAV for the stored size and rotation. No AV1 (no decoder in decord's FFmpeg
    4.1): DecodeError. Files whose packets have no timestamps for decord (AVI with B-frames, e.g. DivX/Xvid) raise
    DecodeError in ``read``, because decord's seeks there land on the wrong frames.
    """

    name = "decord"

    def __init__(self, num_threads: int = 1):
        self.num_threads = num_threads

    def _reader(self, path: str):
        path = _check_file(path)
        import decord  # lazily: no wheels for some platforms (macOS arm64), where PyAV still works

        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=self.num_threads)
        except Exception as e:  # decord raises DECORDError, RuntimeError or AssertionError
            if "cannot find video stream" in str(e):  # no video stream, or no decoder for it: ask PyAV which
                codec = _probe(path)[0]
                raise DecodeError(path, f"decord has no {codec} decoder (its FFmpeg is 4.1)") from e
            _check_video(path)  # a still image: say so, rather than decord's "broken metadata"
            raise DecodeError(path, f"decord cannot open it ({_short(e)})") from e
        if len(reader) <= 1:
            _check_video(path)
        return reader

    def info(self, path: str) -> VideoInfo:
        """decord's frame count (packets it indexed) and average rate; stored size and rotation from PyAV."""
        reader = self._reader(path)
        _, width, height, rotation = _probe(path)
        return VideoInfo(len(reader), float(reader.get_avg_fps()), width, height, rotation)

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        idx = _check_indices(path, indices)
        reader = self._reader(path)
        wanted = sorted(set(idx))
        if wanted and wanted[-1] >= len(reader):
            raise _past_end(path, wanted[-1], len(reader))
        if (reader.get_frame_timestamp(range(len(reader)))[:, 0] < -1e9).any():  # AV_NOPTS_VALUE * time_base
            raise DecodeError(path, "decord cannot seek here: packets without timestamps (e.g. AVI with B-frames)")
        try:
            batch = _to_tensor(reader.get_batch(wanted or [0]))  # already rotated upright by decord
        except Exception as e:  # DECORDError and friends
            raise DecodeError(path, f"decord failed to decode frames {wanted} ({_short(e)})") from e
        if idx and idx == wanted:  # the usual training window: sorted, no repeats
            return batch
        position = {index: p for p, index in enumerate(wanted)}  # np.take: ~10x faster than uint8 advanced indexing
        return torch.from_numpy(np.take(batch.numpy(), [position[i] for i in idx], axis=0))


# -------------------------------------------------------------------------------------------------------- choosing


class AutoDecoder:
    """``primary`` ("decord" or "pyav") first; the other one when it raises DecodeError (e.g. AV1 in decord).

    Stateless: every call tries the primary again. When both fail, the DecodeError names both reasons.
    """

    name = "auto"

    def __init__(self, primary: str = "decord", num_threads: int = 1):
        if primary not in ("decord", "pyav"):
            raise KeyError(f"unknown primary decoder '{primary}' (valid: decord, pyav)")
        self.primary = build_decoder(primary, num_threads)
        self.fallback = build_decoder("pyav" if primary == "decord" else "decord", num_threads)

    def _call(self, method: str, path: str, *args):
        try:
            return getattr(self.primary, method)(path, *args)
        except NotAVideo:
            raise
        except DecodeError as first:
            try:
                return getattr(self.fallback, method)(path, *args)
            except DecodeError as second:
                reason = (first.reason if first.reason == second.reason
                          else f"{self.primary.name}: {first.reason}; {self.fallback.name}: {second.reason}")
                raise DecodeError(path, reason) from second

    def info(self, path: str) -> VideoInfo:
        return self._call("info", path)

    def read(self, path: str, indices: Sequence[int]) -> torch.Tensor:
        return self._call("read", path, indices)


def build_decoder(name: str, num_threads: int = 1) -> VideoDecoder:
    """Decoder by name: "decord", "pyav" or "auto" (decord, then PyAV), with ``num_threads`` decode threads."""
    if name == "decord":
        return DecordDecoder(num_threads)
    if name == "pyav":
        return PyAVDecoder(num_threads=num_threads)
    if name == "auto":
        return AutoDecoder("decord", num_threads)
    raise KeyError(f"unknown video decoder '{name}' (valid: {', '.join(DECODERS)})")
