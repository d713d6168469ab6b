"""Decoding in a killable child process: real decoders stuck inside FFmpeg, crashes, and identical samples."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.video_fixtures import CODECS, encode
from vmim.data.indexes import Entry
from vmim.data.isolation import SLOT_BYTES, DecoderCrashed, IsolatedWorker
from vmim.data.time_limit import DecodeTimeout
from vmim.data.sampler import KeyBatch, with_next_keys
from vmim.data.pretrain_dataset import MaskedClipDataset, collate
from vmim.data.sources import VideoSource
from vmim.masking import MaskGenerator

REPO = Path(__file__).resolve().parents[1]


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


def dataset(entries: list[Entry], decoder: str, isolate: bool, timeout_s: float = 1.0, repeat: int = 1
            ) -> MaskedClipDataset:
    source = VideoSource(entries, num_frames=4, stride=2, size=32, decoder=decoder)
    return MaskedClipDataset([source], {"encoder": MaskGenerator("tube", 0.75, 0.75)}, (2, 8, 8), timeout_s,
                             repeat=repeat, isolate=isolate)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_decoder_stuck_in_ffmpeg_is_killed_and_replaced(stalled_file, webm, decoder):
    data = dataset([Entry(str(stalled_file), 0), Entry(str(webm), 1)], decoder, isolate=True)
    seed = 0
    start = time.perf_counter()
    sample = data[(0, 0, seed)]
    elapsed = time.perf_counter() - start
    assert sample["label"] == 1 and sample["clip"].shape == (3, 4, 32, 32)
    paths = [failure.path for failure in sample["bad"]]
    assert paths == [str(stalled_file)]  # reported once: a replacement that draws it again skips it
    assert "no result after 3 s" in sample["bad"][0].reason and "killed" in sample["bad"][0].reason
    assert elapsed < 3 * 3 + 5  # one kill after timeout + grace, then the known hang is skipped at once
    again = data[(0, 0, seed + 1)]  # the next sample gets a fresh child, and the hung file is not opened again
    assert again["label"] == 1 and again["bad"] == []


@pytest.mark.parametrize("repeat", [1, 3])
def test_isolated_samples_equal_in_process_samples(webm, repeat):
    entries = [Entry(str(webm), 3), Entry(str(webm), 4)]
    isolated, in_process = dataset(entries, "decord", True, repeat=repeat), dataset(entries, "decord", False,
                                                                                    repeat=repeat)
    keys = [(0, i % 2, seed) for i, seed in enumerate((0, 1, 7, 8, 9))]
    expected = [in_process[key] for key in keys]
    for got in ([isolated[key] for key in keys], isolated.__getitems__(keys)):  # one by one, and pipelined
        for a, b in zip(got, expected):
            assert torch.equal(a["clip"], b["clip"]) and torch.equal(a["masks"].encoder, b["masks"].encoder)
            assert torch.equal(torch.as_tensor(a["label"]), torch.as_tensor(b["label"]))


def test_read_ahead_of_the_next_batch_is_used_when_hinted_right_and_dropped_when_wrong(webm):
    entries = [Entry(str(webm), label) for label in range(3)]
    isolated, in_process = dataset(entries, "decord", True), dataset(entries, "decord", False)
    submitted = []
    submit = isolated.isolated.submit
    isolated.isolated.submit = lambda *args, rng: submitted.append(args) or submit(*args, rng=rng)
    first, second, third = [(0, 0, 1), (0, 1, 2)], [(0, 2, 3), (0, 0, 4)], [(0, 1, 5)]
    hinted = with_next_keys([first, second], 1)  # first.next_key = second[0]
    wrong = KeyBatch(first)
    wrong.next_key = (0, 2, 99)  # a worker that guessed wrong: its read-ahead is dropped
    got = [isolated.__getitems__(batch) for batch in (*hinted, wrong, KeyBatch(third))]
    reads = [(0, i) for i in (0, 1, 2, 0, 0, 1, 2, 1)]  # second[0] once (ahead); (0, 2, 99) read, never used
    assert submitted == reads
    assert not isolated.isolated._answers and not isolated.isolated._in_flight and isolated._ahead is None
    for batch, samples in zip((first, second, first, third), got):
        for key, sample in zip(batch, samples, strict=True):
            assert torch.equal(sample["clip"], in_process[key]["clip"]), key


def test_pipelined_batch_with_a_stalled_file_in_the_middle(webm, stalled_file):
    """The child hangs on sample 1 while sample 2 is already queued behind it: the child is killed, sample 2 is
    resent to a fresh one, and the batch equals the one-by-one samples."""
    entries = [Entry(str(webm), 0), Entry(str(stalled_file), 1), Entry(str(webm), 2)]
    keys = [(0, 0, 1), (0, 1, 2), (0, 2, 3), (0, 0, 4)]
    batch = dataset(entries, "decord", isolate=True).__getitems__(keys)
    assert [len(s["bad"]) > 0 for s in batch] == [False, True, False, False]
    assert "no result after 3 s" in batch[1]["bad"][0].reason and batch[1]["label"] != 1
    reference = dataset([entries[0], Entry(str(webm), 1), entries[2]], "decord", isolate=False)
    for i in (0, 2, 3):
        assert torch.equal(batch[i]["clip"], reference[keys[i]]["clip"]), i


def test_isolation_inside_dataloader_workers(webm, stalled_file):
    data = dataset([Entry(str(webm), 0), Entry(str(stalled_file), 1)], "decord", isolate=True)
    keys = [[(0, i % 2, 10 + i) for i in range(4)]]
    batches = list(DataLoader(data, batch_sampler=keys, num_workers=1, collate_fn=collate))
    assert batches[0]["clip"].shape == (4, 3, 4, 32, 32)
    assert (batches[0]["label"] == 0).all()  # every stalled draw was replaced by the good file
    assert {failure.path for failure in batches[0]["bad"]} == {str(stalled_file)}


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


@pytest.mark.parametrize("num_bytes", [1000, SLOT_BYTES + 1])  # through a shared slot, and too big for one
def test_answers_of_any_size_arrive_whole(num_bytes):
    worker = IsolatedWorker(large_answer, timeout_s=30)
    (big, _), (small, label) = worker(num_bytes, rng=np.random.default_rng(0))
    assert big.shape == (num_bytes,) and big[0] == 7 and big[-1] == 7 and big.flags.writeable
    assert small.tolist() == list(range(10)) and label == 1
    worker.close()


def hang_on_zero(value: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    if value == 0:  # a hang SIGALRM cannot break (like a decoder looping in C): only the parent's kill ends it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return crash_on_negative(value, rng)


def expected_answer(seed: int, value: int) -> tuple[np.ndarray, int]:
    return np.random.default_rng(seed).integers(0, 255, (2, 3), dtype=np.uint8), value


@pytest.mark.parametrize("bad, error", [(-1, DecoderCrashed), (0, DecodeTimeout)])
def test_pipelined_calls_behind_a_failed_one_are_resent(bad, error):
    worker = IsolatedWorker(hang_on_zero, timeout_s=1)
    values = [1, bad, 2, 3]
    rngs = [np.random.default_rng(seed) for seed in range(4)]
    tickets = [worker.submit(v, rng=r) for v, r in zip(values[:3], rngs)]  # the third waits on the first's slot
    assert worker.result(tickets[0])[0][1] == 1
    tickets.append(worker.submit(values[3], rng=rngs[3]))
    with pytest.raises(error):
        worker.result(tickets[1])
    for i in (2, 3):  # answered by a fresh child, as if nothing had happened
        (array, value), = worker.result(tickets[i])
        want, _ = expected_answer(i, values[i])
        assert value == values[i] and np.array_equal(array, want)
        after = np.random.default_rng(i)
        after.integers(0, 255, (2, 3), dtype=np.uint8)
        assert rngs[i].bit_generator.state == after.bit_generator.state  # advanced as if the work ran here
    with pytest.raises(KeyError):
        worker.result(tickets[2])  # each answer is given once
    worker.close()


def test_abandoned_calls_do_not_disturb_later_ones():
    worker = IsolatedWorker(crash_on_negative, timeout_s=5)
    worker.abandon([worker.submit(v, rng=np.random.default_rng(v)) for v in (1, 2)])
    (array, value), = worker(5, rng=np.random.default_rng(5))
    assert value == 5 and np.array_equal(array, expected_answer(5, 5)[0])
    assert not worker._answers  # nothing left behind
    worker.close()


CTRL_C_AT_DECODE_CHILD_FORK = """
import os, signal
import numpy as np
from vmim.data.isolation import IsolatedWorker
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with SIGINT ignored
main_pid, armed = os.getpid(), [True]
def hook():
    if os.getpid() == main_pid and armed:
        armed.clear()
        signal.raise_signal(signal.SIGINT)
os.register_at_fork(after_in_parent=hook)
def double(x, rng):
    return 2 * x
worker = IsolatedWorker(double, timeout_s=30)
try:
    worker(1, rng=np.random.default_rng(0))
    print("no interrupt")
except KeyboardInterrupt:
    print("KeyboardInterrupt", worker(2, rng=np.random.default_rng(0)))
worker.close()
"""


def test_ctrl_c_while_a_decode_child_is_forked_is_raised_in_the_parent():
    """With 0 loader workers the trainer forks the decode child itself: a Ctrl-C landing in a fork hook then (raised
    from the test's ``after_in_parent`` hook, deterministically) reaches the trainer as KeyboardInterrupt after the
    fork, not "Exception ignored" and dropped; the worker still answers afterwards."""
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT_DECODE_CHILD_FORK], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["KeyboardInterrupt", "4"], proc.stdout + proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr, proc.stderr[-3000:]
