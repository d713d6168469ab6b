"""Bad files: reported once with a clear reason and no decoder noise, remembered across workers, epochs and restarts,
replaced exactly (a sample is a function of its key and of which files fail), counted, and the run stopped past the
threshold."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.video_fixtures import CODECS, encode, frame_image
from vmim.data import BadFileMonitor, Failure, MaskedClipDataset, MixedBatchSampler, PretrainData, build_loader
from vmim.data.bad_files import TooManyBadFiles
from vmim.data.indexes import Entry
from vmim.data.sources import VideoSource
from vmim.masking import MaskGenerator

REPO = Path(__file__).resolve().parents[1]
NOISE = ("moov atom not found", "ERROR opening", "Invalid data found", "video_reader.cc")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Good H.264 clips, and files that are no video to train on: truncated, garbage, still images renamed .mp4, a
    one-frame video, and a DivX-style AVI that decord opens but cannot read (after the clip's frames are drawn)."""
    root = tmp_path_factory.mktemp("bad_files")
    codec, suffix, options = CODECS["h264"]
    out = {f"good_{i}": encode(str(root / f"good_{i}.{suffix}"), codec, options) for i in range(3)}
    good = Path(out["good_0"]).read_bytes()
    (root / "truncated.mp4").write_bytes(good[: len(good) // 3])  # moov atom at the end: lost
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    out.update(truncated=str(root / "truncated.mp4"), garbage=str(root / "garbage.mp4"))
    for fmt in ("PNG", "JPEG", "BMP", "TIFF"):
        path = root / f"still_{fmt.lower()}.mp4"
        Image.fromarray(frame_image(5)).save(path, format=fmt)
        out[f"still_{fmt.lower()}"] = str(path)
    out["one_frame"] = encode(str(root / "one_frame.mp4"), codec, options, num_frames=1)
    out["bframes_avi"] = encode(str(root / "bframes.avi"), "mpeg4", CODECS["mpeg4"][2], max_b_frames=2)
    return out


def dataset(paths: list[str], isolate: bool = False, decoder: str = "auto") -> MaskedClipDataset:
    source = VideoSource([Entry(p, label) for label, p in enumerate(paths)], num_frames=4, stride=2, size=32,
                         decoder=decoder)
    return MaskedClipDataset([source], {"encoder": MaskGenerator("tube", 0.75, 0.75)}, (2, 8, 8), 30.0,
                             isolate=isolate)


def same_sample(a: dict, b: dict) -> bool:
    return (torch.equal(a["clip"], b["clip"]) and torch.equal(a["masks"].encoder, b["masks"].encoder)
            and a["label"] == b["label"])


# ----------------------------------------------------------------------------------------------------
# not a video
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["still_png", "still_jpeg", "still_bmp", "still_tiff", "one_frame"])
@pytest.mark.parametrize("isolate", [False, True])
def test_a_file_that_is_no_clip_is_a_bad_file_with_its_reason(files, kind, isolate):
    """A still image renamed .mp4 opens in FFmpeg as a one-frame video; looping it would train on one picture. It is
    replaced and reported, like a one-frame video where the clip takes 4 frames."""
    data = dataset([files[kind], files["good_0"]], isolate)
    samples = [data[(0, 0, seed)] for seed in range(3)]
    assert [s["label"] for s in samples] == [1, 1, 1]  # always the replacement: the good clip
    (failure,) = samples[0]["bad"]
    assert failure.path == files[kind] and "not a video" in failure.reason, failure.reason
    assert ("image" in failure.reason) == (kind != "one_frame")
    assert not samples[1]["bad"] and not samples[2]["bad"]  # known now: not opened again


# ----------------------------------------------------------------------------------------------------
# exact replacement
# ----------------------------------------------------------------------------------------------------


def test_a_replacement_depends_on_the_key_and_the_bad_files_only(files):
    """A DivX AVI fails in decord's read, after the clip's frame indices were drawn; garbage fails on open, before; a
    known bad file is not opened at all. All three are replaced by the same sample, in process and isolated."""
    good = [files["good_0"], files["good_1"], files["good_2"]]
    keys = [(0, 0, seed) for seed in (3, 11, 12345)]
    skipping = dataset([files["bframes_avi"], *good], decoder="decord")
    skipping.known_bad.add((0, 0))
    for key in keys:  # fresh datasets: each meets the bad file for the first time
        late = dataset([files["bframes_avi"], *good], decoder="decord")[key]
        early = dataset([files["garbage"], *good], decoder="decord")[key]
        isolated = dataset([files["bframes_avi"], *good], isolate=True, decoder="decord")[key]
        assert "timestamps" in late["bad"][0].reason and early["bad"] and isolated["bad"] and late["label"] != 0
        assert same_sample(late, early) and same_sample(late, isolated), key
        skipped = skipping[key]
        assert not skipped["bad"] and same_sample(skipped, late), key  # no attempt made, same sample


# ----------------------------------------------------------------------------------------------------
# memory across workers, epochs and restarts
# ----------------------------------------------------------------------------------------------------


def pretrain_data(paths: list[str], workers: int) -> PretrainData:
    data = dataset(paths, isolate=True)
    sampler = MixedBatchSampler([len(paths)], [1.0], batch_size=2, seed=0, batches_per_epoch=10)
    monitor = BadFileMonitor(["clips"], [len(paths)], [0], max_fraction=0.5)
    return PretrainData(build_loader(data, sampler, workers), sampler, ["clips"], monitor)


@pytest.mark.slow
def test_failures_are_remembered_across_workers_epochs_and_restarts(files):
    paths = [files["garbage"], files["truncated"], files["good_0"], files["good_1"], files["good_2"]]
    workers = 2
    failures: list[Failure] = []
    first_epoch: list[dict] = []
    with pretrain_data(paths, workers) as data:
        assert len(data) == 10
        for epoch in range(3):
            data.set_epoch(epoch)
            for batch in data:
                failures += batch["bad"]
                if epoch == 0:
                    first_epoch.append(batch)
        drawn = sum(i < 2 for e in range(3) for keys in epoch_keys(data.sampler, e) for _, i, _ in keys)
        state, scalars = data.state_dict(), data.monitor.scalars()
    assert drawn > 2 * workers  # bad files are drawn often enough that retrying them would show
    per_file = Counter(f.path for f in failures)
    assert set(per_file) == {files["garbage"], files["truncated"]}
    assert max(per_file.values()) <= workers, per_file  # each worker meets a bad file at most once, then skips it
    assert scalars["data/bad_files/clips"] == 2
    assert {name: sorted(p for _, p, _ in entries) for name, entries in state["bad_files"].items()} == {
        "clips": sorted([files["garbage"], files["truncated"]])}

    with pretrain_data(paths, workers) as restarted:  # a restart: fresh processes, the memory from the checkpoint
        restarted.load_state_dict(state)
        assert restarted.monitor.scalars() == scalars
        restarted.set_epoch(0)
        again = list(restarted)
    assert not [f for batch in again for f in batch["bad"]]  # nothing opened twice
    for a, b in zip(again, first_epoch, strict=True):  # and the same samples as when the files failed
        assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["masks"].encoder, b["masks"].encoder)


def epoch_keys(sampler: MixedBatchSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_pretrain_data_counts_bad_files_and_stops_past_the_threshold(files):
    paths = [files["garbage"], files["truncated"], files["good_0"]]
    data = dataset(paths)
    sampler = MixedBatchSampler([3], [1.0], batch_size=3, seed=0, batches_per_epoch=4)
    monitor = BadFileMonitor(["clips"], [4], [1], max_fraction=0.5)  # one more file was missing at start-up
    with PretrainData(build_loader(data, sampler, 0), sampler, ["clips"], monitor) as run:
        run.set_epoch(0)
        with pytest.raises(TooManyBadFiles, match="1 missing \\+ 2 undecodable of 4 listed files = 75.0%"):
            list(run)


# ----------------------------------------------------------------------------------------------------
# the monitor
# ----------------------------------------------------------------------------------------------------


def test_monitor_counts_each_file_once_and_stops_past_threshold():
    monitor = BadFileMonitor(["k400", "in1k"], listed=[20, 100], missing=[1, 0], max_fraction=0.2)
    monitor.update([Failure(0, 3, "/v/a.mp4", "truncated"), Failure(0, 3, "/v/a.mp4", "truncated"),
                    Failure(1, 0, "/i/x.jpg", "bad")])
    assert monitor.scalars() == {"data/bad_files": 3.0, "data/bad_files/k400": 2.0, "data/bad_files/in1k": 1.0}
    assert monitor.known_bad() == {(0, 3), (1, 0)}
    monitor.update([Failure(0, 5, "/v/b.mp4", "zero bytes"), Failure(0, 7, "/v/c.mp4", "garbage")])  # 4 of 20: 20%
    with pytest.raises(TooManyBadFiles, match=r"data.max_bad_fraction=0.2") as info:
        monitor.update([Failure(0, 9, "/v/d.mp4", "garbage")])  # 25%
    assert "k400" in str(info.value) and "1 missing + 4 undecodable of 20" in str(info.value)


def test_monitor_state_survives_a_restart_unless_the_list_changed():
    monitor = BadFileMonitor(["k400", "in1k"], listed=[20, 100], missing=[0, 0], max_fraction=0.5)
    monitor.update([Failure(0, 3, "/v/a.mp4", "truncated"), Failure(1, 8, "/i/x.jpg", "bad"),
                    Failure(1, 9, "/i/y.jpg", "bad")])
    state = monitor.state_dict()
    restored = BadFileMonitor(["in1k", "k400", "new"], listed=[100, 20, 5], missing=[0, 0, 0], max_fraction=0.5)
    now = {(1, 3): "/v/a.mp4", (0, 8): "/i/x.jpg", (0, 9): "/i/moved.jpg"}  # datasets reordered; y.jpg moved
    restored.load_state_dict(state, describe=lambda d, i: now.get((d, i)))
    assert restored.known_bad() == {(1, 3), (0, 8)}
    assert restored.scalars()["data/bad_files/in1k"] == 1 and restored.scalars()["data/bad_files/k400"] == 1
    strict = BadFileMonitor(["k400", "in1k"], listed=[20, 100], missing=[9, 0], max_fraction=0.45)
    with pytest.raises(TooManyBadFiles, match="k400"):
        strict.load_state_dict(state)  # 9 missing + 1 known bad of 20 = 50%


# ----------------------------------------------------------------------------------------------------
# decoder noise
# ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("isolation", ["true", "false"])
def test_decoder_noise_stays_off_the_terminal_and_joins_the_reason(files, tmp_path, isolation):
    """FFmpeg and decord print several lines per corrupt file; the run's own report (one line per bad file, with the
    decoder's last words in its reason) is all that should show."""
    names = ["truncated", "garbage", "good_0"]  # the two batches the script takes hold all three
    video_list = tmp_path / "train.txt"
    video_list.write_text("".join(f"{files[n]} {i}\n" for i, n in enumerate(names)))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "loader_script.py"), "success", str(video_list),
                           isolation], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reasons = {line.split()[1]: line for line in proc.stdout.splitlines() if line.startswith("BAD")}
    assert files["truncated"] in reasons, proc.stdout  # the corrupt file was drawn and decoded
    assert "moov atom not found" in reasons[files["truncated"]]  # FFmpeg's own words, in the report
    noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noise, "\n".join(noise)
