"""Multi-view evaluation: exact accuracy on real videos, softmax-then-mean merging, bad files as misses (one line each,
remembered: a known bad file is not opened again), predictions file, a stop signal ending a pass after the current
batch (also over two gloo ranks whose shards differ in length), and a two-process gloo run that equals the
one-process result."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.video_fixtures import CODECS, encode, encode_frames
from vmim.data.digits import DigitImages, DigitMotion
from vmim.data.eval_views import build_test_loader
from vmim.data.indexes import Entry
from vmim.data.sources import VideoSource
from vmim.engine.distributed import DistInfo
from vmim.data.bad_files import BadFileMonitor, TooManyBadFiles
from vmim.engine.evaluate import EvalResult, VideoRecord, evaluate, merge_records, report_failures
from vmim.engine.preemption import Interrupted, StopSignals

NUM_CLASSES = 7
TRUE_CLASSES = [0, 1, 2, 0, 1, 2]  # dominant colour channel of colour video i
LISTED = [0, 1, 2, 6, 0, 2]  # video 3: a label never in the top 5; video 4: in the top 5, not first
SOURCE_OPTIONS = dict(num_frames=4, stride=2, size=32, decoder="pyav")


class ChannelModel(torch.nn.Module):
    """Logits 10 * (mean of R, G, B in [0, 1], then 0.05, 0.04, 0.03, -1): the top 5 of a clip are its channels by
    brightness, then classes 3 and 4; class 6 is always last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.float().mean(dim=(2, 3, 4)) / 255
        rest = torch.tensor([0.05, 0.04, 0.03, -1.0]).expand(len(x), -1)
        return 10 * torch.cat([means, rest], dim=1)


class PositionModel(torch.nn.Module):
    """Logits ``40 * (mean red - 0.31) * (1, -1, 0.5, 0, -0.5)``: on the pattern videos (red grows left to right) the
    left crop votes for class 1, the right crop for class 0, and the moving square shifts every temporal view."""

    def __init__(self):
        super().__init__()
        self.weight = torch.tensor([1.0, -1.0, 0.5, 0.0, -0.5])
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        red = x[:, 0].float().mean(dim=(1, 2, 3)) / 255
        return 40 * (red[:, None] - 0.31) * self.weight


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """Six 64x48 colour videos (channel ``TRUE_CLASSES[i]`` bright, a horizontal ramp on all channels), a corrupt
    .mp4 and two 128x96 pattern videos (gradients and a moving square)."""
    root = tmp_path_factory.mktemp("evaluate")
    ramp = np.linspace(0, 40, 64, dtype=np.float32)[None, None, :, None]
    colour = []
    for i, c in enumerate(TRUE_CLASSES):
        frames = np.full((12, 48, 64, 3), 60.0, dtype=np.float32) + ramp + np.arange(12)[:, None, None, None]
        frames[..., c] += 120
        colour.append(encode_frames(str(root / f"colour{i}.mp4"), frames.round().astype(np.uint8)))
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    codec, suffix, options = CODECS["h264"]
    pattern = [encode(str(root / f"pattern{i}.{suffix}"), codec, options, num_frames=24 + 8 * i) for i in range(2)]
    return {"colour": colour, "corrupt": str(corrupt), "pattern": pattern}


def colour_entries(videos: dict, with_corrupt: bool = False) -> list[Entry]:
    entries = [Entry(path, label) for path, label in zip(videos["colour"], LISTED)]
    if with_corrupt:
        entries.insert(2, Entry(videos["corrupt"], 1))  # mid-list: it shifts the indices after it
    return entries


def run_eval(entries: list[Entry], model, num_views: int = 2, num_crops: int = 3, batch_size: int = 4,
             world_size: int = 1, rank: int = 0, isolate: bool = False, known_bad: dict | None = None,
             **kwargs) -> EvalResult:
    source = VideoSource(entries, **SOURCE_OPTIONS)
    loader = build_test_loader(source, num_views, num_crops, 0, batch_size, world_size=world_size, rank=rank,
                               isolate=isolate, known_bad=known_bad)
    return evaluate(model, loader, kwargs.pop("num_classes", NUM_CLASSES), "cpu", **kwargs)


def test_exact_accuracy_on_real_videos(videos):
    result = run_eval(colour_entries(videos), ChannelModel())
    assert result.summary_line() == "top1 66.67% top5 83.33% (6 videos, 2 x 3 views)"
    assert (result.top1, result.top5) == (4 / 6, 5 / 6)
    assert (result.num_videos, result.num_failed, result.num_views, result.num_crops) == (6, 0, 2, 3)
    assert result.failed_lines() == []
    assert [r.index for r in result.records] == list(range(6))
    assert [r.path for r in result.records] == videos["colour"] and [r.label for r in result.records] == LISTED
    for record, true in zip(result.records, TRUE_CLASSES):
        assert record.top5[0] == true and sorted(record.top5[3:]) == [3, 4] and len(record.scores) == 5
        assert list(record.scores) == sorted(record.scores, reverse=True) and sum(record.scores) < 1
    assert [r.correct for r in result.records] == [True, True, True, False, False, True]
    assert result.loss == pytest.approx(np.mean([-math.log(r.label_score) for r in result.records]))
    assert result.records[3].label_score < 1e-3  # class 6: far below the others


def test_views_merge_by_softmax_then_mean(videos):
    entries = [Entry(path, i) for i, path in enumerate(videos["pattern"])]
    model = PositionModel().train()
    result = run_eval(entries, model, num_classes=5, batch_size=2)
    assert model.training and model.modes and not any(model.modes)  # eval mode inside, train mode given back
    source = VideoSource(entries, **SOURCE_OPTIONS)
    for record in result.records:
        clips, _ = source.test_views(record.index, 2, 3)
        logits = model(clips)  # (6, 5): one row per view
        assert logits.argmax(-1).unique().numel() > 1  # the views vote for different classes
        merged = logits.softmax(-1).mean(0)
        assert list(record.top5) == merged.argsort(descending=True).tolist()
        assert list(record.scores) == pytest.approx(merged.sort(descending=True).values.tolist(), abs=1e-6)
        assert record.label_score == pytest.approx(merged[record.label].item(), abs=1e-6)
        averaged_logits = logits.mean(0).softmax(-1)  # the wrong merge ranks the classes differently here
        assert averaged_logits.argsort(descending=True).tolist() != list(record.top5)
        assert (averaged_logits - merged).abs().max() > 0.05
    chunked = run_eval(entries, model, num_classes=5, batch_size=1, chunk_size=4)  # chunks split a video's views
    assert [r.top5 for r in chunked.records] == [r.top5 for r in result.records]
    assert [s for r in chunked.records for s in r.scores] == pytest.approx(
        [s for r in result.records for s in r.scores], abs=1e-6)


def test_corrupt_file_is_a_reported_miss(videos, tmp_path):
    result = run_eval(colour_entries(videos, with_corrupt=True), ChannelModel(), batch_size=3, isolate=True)
    assert result.summary_line() == ("top1 57.14% top5 71.43% (7 videos, 1 failed to load and count as misses, "
                                     "2 x 3 views)")  # 4 / 7, 5 / 7
    assert (result.num_videos, result.num_failed) == (7, 1)
    bad = result.records[2]
    assert (bad.index, bad.path, bad.label, bad.top5, bad.label_score) == (2, videos["corrupt"], 1, (), None)
    assert bad.error and not bad.correct and not bad.in_top5
    assert result.failed_lines() == [f"{videos['corrupt']}: {' '.join(bad.error.split())} (failed to load: a miss)"]
    loaded = [r for r in result.records if r.loaded]
    assert result.loss == pytest.approx(np.mean([-math.log(r.label_score) for r in loaded]))  # loaded videos only

    path = result.write_predictions(tmp_path / "out" / "predictions.tsv")
    assert path == tmp_path / "out" / "predictions.tsv" and sorted(p.name for p in path.parent.iterdir()) == [
        "predictions.tsv"]  # renamed into place: no temporary file left
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["path", "label", "top5", "scores", "correct", "error"] and len(rows) == 8
    assert rows[3] == [videos["corrupt"], "1", "", "", "0", " ".join(bad.error.split())]
    first = rows[1]
    assert first[:2] == [videos["colour"][0], "0"] and first[2].split(",")[0] == "0" and first[4:] == ["1", ""]
    assert [float(s) for s in first[3].split(",")] == pytest.approx(result.records[0].scores, abs=1e-6)
    assert [row[4] for row in rows[1:]] == ["1", "1", "0", "1", "0", "0", "1"]


def test_images_take_one_centre_view_and_labels_must_fit():
    source = DigitImages("test", img_size=16)
    loader = build_test_loader(source, 1, 1, 0, batch_size=128, isolate=False)
    result = evaluate(lambda x: torch.arange(10.0).flip(0).expand(len(x), -1), loader, 10, "cpu")
    assert result.modality == "image"
    assert result.summary_line().endswith(f"({len(source)} images, 1 view)")  # was "359 videos, 1 x 1 views"
    assert result.top1 == pytest.approx(np.mean(source.labels == 0)) and result.top5 == pytest.approx(
        np.mean(source.labels < 5))
    with pytest.raises(ValueError, match=r"label [5-9] is outside 0\.\.4"):
        evaluate(lambda x: torch.zeros(len(x), 5), loader, 5, "cpu")
    with pytest.raises(ValueError, match=r"expected \(128, 10\)"):
        evaluate(lambda x: torch.zeros(len(x), 3), loader, 10, "cpu")


def test_the_summary_names_images_and_videos_by_the_source_modality():
    """The built-in digits_images (image) and digits_motion (video) test sets, scored by a model that always ranks
    class 0 first: the known accuracy, and the line names what was evaluated. Images: their crops are their views."""
    def first_class_model(x: torch.Tensor) -> torch.Tensor:
        return torch.arange(10.0).flip(0).expand(len(x), -1)

    images = DigitImages("test", img_size=16)
    result = evaluate(first_class_model, build_test_loader(images, 1, 3, 0, batch_size=128, isolate=False), 10, "cpu")
    assert result.summary_line() == f"top1 {100 * np.mean(images.labels == 0):.2f}% top5 " \
                                    f"{100 * np.mean(images.labels < 5):.2f}% ({len(images)} images, 3 views)"
    motion = DigitMotion("test", img_size=16, num_frames=4)
    result = evaluate(first_class_model, build_test_loader(motion, 2, 1, 0, batch_size=128, isolate=False), 10, "cpu")
    assert result.modality == "video" and result.top1 == pytest.approx(90 / 359)  # labels i % 4, permuted: 90 zeros
    assert result.summary_line() == f"top1 25.07% top5 100.00% ({len(motion)} videos, 2 x 1 views)"
    one = EvalResult.from_records([record(0)], 1, 1, modality="image")
    assert one.summary_line() == "top1 100.00% top5 100.00% (1 image, 1 view)"
    assert EvalResult.from_records([record(0), record(1)], 2, 3).summary_line().endswith("(2 videos, 2 x 3 views)")


def test_a_stopped_image_pass_counts_images():
    class SignalOnFirstCall(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            os.kill(os.getpid(), signal.SIGTERM)
            return torch.zeros(len(x), 10)

    images = DigitImages("test", img_size=16)
    loader = build_test_loader(images, 1, 1, 0, batch_size=100, isolate=False)
    with StopSignals() as stop:
        with pytest.raises(Interrupted, match=rf"SIGTERM received: evaluation stopped after 100 of {len(images)} "
                                              r"images$"):
            evaluate(SignalOnFirstCall(), loader, 10, "cpu", stop=stop)


def record(index: int, path: str = "p") -> VideoRecord:
    return VideoRecord(index, path, 0, (0,), (1.0,), 1.0)


def test_merge_refuses_a_video_counted_twice_or_dropped():
    assert [r.index for r in merge_records([[record(2), record(0)], [record(1)]], 3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match=r"1 counted more than once \(indices 1\)"):
        merge_records([[record(0), record(1)], [record(1), record(2)]], 3)
    with pytest.raises(RuntimeError, match=r"1 never evaluated \(indices 1\)"):
        merge_records([[record(0)], [record(2)]], 3)
    with pytest.raises(RuntimeError, match="outside 0..2"):
        merge_records([[record(0), record(1), record(2), record(3)]], 3)


# ---- two processes (gloo) -------------------------------------------------------------------------------------

def spawn_two_ranks(fn, *args, what: str) -> None:
    """Run ``fn(rank, 2, *args)`` in two spawned processes and wait for both (120 s at most)."""
    context = torch.multiprocessing.spawn(fn, args=(2, *args), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"{what} within 120 s")


def as_json(result: EvalResult) -> dict:
    return json.loads(json.dumps({"records": [asdict(r) for r in result.records], "top1": result.top1,
                                  "top5": result.top5, "loss": result.loss, "summary": result.summary_line()}))


def _rank_main(rank: int, world_size: int, entries: list[Entry], out: str) -> None:
    """One rank of the gloo run: evaluate its shard, write the merged result to ``out``/rank{rank}.json."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank,  # no port race
                                         world_size=world_size)
    try:
        result = run_eval(entries, ChannelModel(), batch_size=2, world_size=world_size, rank=rank,
                          dist=DistInfo(rank, world_size, rank))
        result.write_predictions(Path(out) / f"predictions{rank}.tsv")
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(as_json(result)))
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(videos, tmp_path):
    entries = colour_entries(videos, with_corrupt=True)  # 7 videos: shards of 4 and 3, a failure on rank 0
    spawn_two_ranks(_rank_main, entries, str(tmp_path), what="two-process evaluation did not finish")
    single = as_json(run_eval(entries, ChannelModel(), batch_size=2))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for merged in ranks:  # every rank holds the whole merged result
        assert [r["index"] for r in merged["records"]] == list(range(7))
        assert merged["summary"] == single["summary"] == ("top1 57.14% top5 71.43% (7 videos, 1 failed to load "
                                                          "and count as misses, 2 x 3 views)")
        assert merged["loss"] == pytest.approx(single["loss"], abs=1e-6)
        for got, want in zip(merged["records"], single["records"]):
            assert {k: v for k, v in got.items() if k not in ("scores", "label_score")} == {
                k: v for k, v in want.items() if k not in ("scores", "label_score")}
            assert got["scores"] == pytest.approx(want["scores"], abs=1e-6)
    assert (tmp_path / "predictions0.tsv").exists() and not (tmp_path / "predictions1.tsv").exists()  # rank 0 only


def test_failures_are_reported_once_and_known_bad_files_are_not_opened_again(videos):
    """Two passes with one monitor (validation every epoch; the EMA's pass): the corrupt file has one line, and the
    second pass fails it from memory. A good file marked known bad is not opened: it fails with the given reason."""
    entries = colour_entries(videos, with_corrupt=True)
    lines: list[str] = []
    monitor = BadFileMonitor(["val"], [7], [0], 0.5, action="counted as a miss", report=lines.append)
    first = run_eval(entries, ChannelModel(), isolate=True, known_bad=monitor.known_reasons(0))
    report_failures(monitor, 0, first)
    second = run_eval(entries, ChannelModel(), isolate=True, known_bad=monitor.known_reasons(0))
    report_failures(monitor, 0, second)
    assert len(lines) == 1 and lines[0].startswith(f"bad file in dataset 'val': {videos['corrupt']}: ")
    assert lines[0].endswith("(counted as a miss; 1 bad so far)") and "\n" not in lines[0]
    assert second.records[2].error == first.records[2].error and second.summary_line() == first.summary_line()
    remembered = run_eval(entries, ChannelModel(), known_bad={0: "failed before"})  # video 0 decodes fine
    assert remembered.records[0].error == "failed before" and remembered.num_failed == 2
    monitor = BadFileMonitor(["val"], [7], [0], 0.1, action="counted as a miss", report=lines.append)
    with pytest.raises(TooManyBadFiles, match=r"dataset 'val': 0 missing \+ 1 undecodable of 7 listed"):
        report_failures(monitor, 0, first)  # 1 / 7 > 0.1: the threshold applies to evaluation too


class SignalOnCall(ChannelModel):
    """ChannelModel that sends SIGTERM to this process during its ``at``-th call (a known point of the pass)."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(x)


def test_sigterm_ends_the_pass_after_the_current_batch(videos):
    model = SignalOnCall(at=1)
    with StopSignals() as stop:
        with pytest.raises(Interrupted, match=r"SIGTERM received: evaluation stopped after 2 of 6 videos") as info:
            run_eval(colour_entries(videos), model, batch_size=2, stop=stop)
    assert model.calls == 1 and info.value.exit_code == 128 + signal.SIGTERM and info.value.request == "stop"
    assert run_eval(colour_entries(videos), ChannelModel(), stop=StopSignals()).num_videos == 6  # none: runs through


def _stopping_rank(rank: int, world_size: int, entries: list[Entry], out: str) -> None:
    """Rank 1 records a stop during its last batch (3 videos, batch 1); rank 0 has 4 batches. Both must raise
    Interrupted at the same agreement (rank 1 joins it without a batch), not hang or gather."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world_size)
    stop = StopSignals()  # not installed: the request is recorded by the model, as a handler would
    calls = []

    def model(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        if rank == 1 and len(calls) == 3:
            stop.requested, stop.signal_name = "stop", "SIGTERM"
        return ChannelModel()(x)

    try:
        run_eval(entries, model, num_views=1, num_crops=1, batch_size=1, world_size=world_size, rank=rank,
                 dist=DistInfo(rank, world_size, rank), stop=stop)
        outcome = "finished"
    except Interrupted as err:
        outcome = f"{err.request} {err.signal_name}: {err}"
    finally:
        torch.distributed.destroy_process_group()
    (Path(out) / f"rank{rank}.txt").write_text(outcome)


def test_a_stop_on_one_rank_ends_every_rank_at_the_same_batch(videos, tmp_path):
    entries = colour_entries(videos, with_corrupt=True)  # 7 videos: shards of 4 and 3
    spawn_two_ranks(_stopping_rank, entries, str(tmp_path), what="the ranks did not agree on the stop")
    # rank 0 is told by rank 1 (no signal of its own) before its 4th batch, rank 1 asks without one
    assert (tmp_path / "rank0.txt").read_text() == "stop None: a stop signal received: evaluation stopped after 3 " \
                                                   "of 7 videos"
    assert (tmp_path / "rank1.txt").read_text() == "stop SIGTERM: SIGTERM received: evaluation stopped after 3 of " \
                                                   "7 videos"
