"""Decoding in a killable child process: real decoders stuck inside FFmpeg, crashes, and identical samples."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.video_fixtures import CODECS, encode
from vmim.data.indexes import Entry
from vmim.data.isolation import DecoderCrashed, IsolatedWorker
from vmim.data.pretrain_dataset import MaskedClipDataset, collate
from vmim.data.sources import VideoSource
from vmim.masking import MaskGenerator


@pytest.fixture(scope="module")
def webm(tmp_path_factory) -> Path:
    codec, suffix, options = CODECS["vp9"]
    path = tmp_path_factory.mktemp("iso") / f"good.{suffix}"
    encode(str(path), codec, options)
    return path


@pytest.fixture
def stalled_file(tmp_path, webm):
    """A named pipe that delivers the first 2 kB of a real WebM file and then nothing: FFmpeg blocks in read()
    and retries after EINTR, like a read from a hung network file system. SIGALRM cannot break this."""
    path = tmp_path / "stalled.webm"
    os.mkfifo(path)
    release = threading.Event()

    def writer():
        fd = os.open(path, os.O_WRONLY)  # blocks until the decoder opens the pipe
        try:
            os.write(fd, webm.read_bytes()[:2000])
            release.wait(120)
        finally:
            os.close(fd)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    yield path
    release.set()
    if not thread.is_alive():
        return
    try:  # unblock a writer still waiting for a reader
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        pass


def dataset(entries: list[Entry], decoder: str, isolate: bool, timeout_s: float = 1.0) -> MaskedClipDataset:
    source = VideoSource(entries, num_frames=4, stride=2, size=32, decoder=decoder)
    return MaskedClipDataset([source], MaskGenerator("tube", 0.75, 0.75), (2, 8, 8), timeout_s, isolate=isolate)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decoder_stuck_in_ffmpeg_is_killed_and_replaced(stalled_file, webm, decoder):
    data = dataset([Entry(str(stalled_file), 0), Entry(str(webm), 1)], decoder, isolate=True)
    seed = 0
    start = time.perf_counter()
    sample = data[(0, 0, seed)]
    elapsed = time.perf_counter() - start
    assert sample["label"] == 1 and sample["clip"].shape == (3, 4, 32, 32)
    paths = [path for _, path, _ in sample["bad"]]
    assert paths and set(paths) == {str(stalled_file)}
    assert "no result after 3 s" in sample["bad"][0][2] and "killed" in sample["bad"][0][2]
    assert elapsed < 3 * 3 + 5  # one kill after timeout + grace, then known hangs fail at once
    again = data[(0, 0, seed + 1)]  # the next sample gets a fresh child, and the hung file fails without waiting
    assert again["label"] == 1
    assert all("not retried" in reason for _, _, reason in again["bad"])


def test_isolated_samples_equal_in_process_samples(webm):
    entries = [Entry(str(webm), 3)]
    isolated, in_process = dataset(entries, "decord", True), dataset(entries, "decord", False)
    for seed in (0, 1, 7):
        a, b = isolated[(0, 0, seed)], in_process[(0, 0, seed)]
        assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["mask"], b["mask"])


def test_isolation_inside_dataloader_workers(webm, stalled_file):
    data = dataset([Entry(str(webm), 0), Entry(str(stalled_file), 1)], "decord", isolate=True)
    keys = [[(0, i % 2, 10 + i) for i in range(4)]]
    batches = list(DataLoader(data, batch_sampler=keys, num_workers=1, collate_fn=collate))
    assert batches[0]["clip"].shape == (4, 3, 4, 32, 32)
    assert (batches[0]["label"] == 0).all()  # every stalled draw was replaced by the good file
    assert {path for _, path, _ in batches[0]["bad"]} == {str(stalled_file)}


def crash_on_negative(value: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    if value < 0:
        os.kill(os.getpid(), signal.SIGSEGV)  # what a decoder bug does to the process
    return [(rng.integers(0, 255, (2, 3), dtype=np.uint8), value)]


def test_crashed_child_is_reported_and_replaced_by_a_fresh_one():
    worker = IsolatedWorker(crash_on_negative, timeout_s=5)
    rng = np.random.default_rng(0)
    first = worker(1, rng=rng)
    pid = worker._pid
    with pytest.raises(DecoderCrashed, match="killed by signal 11"):
        worker(-1, rng=rng)
    second = worker(2, rng=rng)
    assert worker._pid not in (None, pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the crashed child was reaped
    expected = np.random.default_rng(0)
    assert np.array_equal(first[0][0], expected.integers(0, 255, (2, 3), dtype=np.uint8))
    assert np.array_equal(second[0][0], expected.integers(0, 255, (2, 3), dtype=np.uint8))  # rng advanced in sync
    worker.close()


def large_answer(num_bytes: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    return [(np.full(num_bytes, 7, dtype=np.uint8), 0), (np.arange(10, dtype=np.int64), 1)]


@pytest.mark.parametrize("num_bytes", [1000, (64 << 20) + 1])  # through the shared block, and too big for it
def test_answers_of_any_size_arrive_whole(num_bytes):
    worker = IsolatedWorker(large_answer, timeout_s=30)
    (big, _), (small, label) = worker(num_bytes, rng=np.random.default_rng(0))
    assert big.shape == (num_bytes,) and big[0] == 7 and big[-1] == 7 and big.flags.writeable
    assert small.tolist() == list(range(10)) and label == 1
    worker.close()
