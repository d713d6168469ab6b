#!/usr/bin/env python
"""Data-loader throughput against the raw decord decode of exactly the same frames.

For H.264 clips (default: two synthetic 10 s videos, 320x240 and 640x480, 30 fps, made with PyAV on first use)
it times, in one run:
  * raw: ``decord.VideoReader(path, num_threads=1).get_batch(indices)`` in this process, opening the file per
    clip, for the frame indices the loader itself picks (same seeds);
  * the full loader (decode + clip sampling + multi-scale crop to 224 + masking + collate) with 0, 1, 2 workers,
    decoding in a killable child process (the default, ``data.decode_isolation``);
  * with 1 worker: decoding in the worker itself (``data.decode_isolation=false``), and repeated sampling
    (``--repeat`` clips per decode, over the same windows).
Every loader measurement sits between two raw measurements and is divided by their mean, and the whole sequence
runs ``--rounds`` times; the median ratio is printed (with each round's). This VM's speed drifts by 10-20 % over
seconds, which a single raw figure for the whole run does not cancel. The first batch (worker start-up) is not
timed.

    python tools/bench_data.py [--videos a.mp4 b.mp4] [--clips 24] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from vmim.data.indexes import Entry
from vmim.data.lifetime import init_loader_worker
from vmim.data.pretrain_dataset import MaskedClipDataset, collate
from vmim.data.sampler import with_next_keys
from vmim.data.sources import VideoSource
from vmim.masking import MaskGenerator


def make_video(path: Path, width: int, height: int, seconds: float = 10.0, fps: int = 30) -> Path:
    """Moving-texture H.264 (libx264, crf 23, yuv420p, default GOP) written with PyAV."""
    import av

    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            y, x = (i * 2) % height, (i * 3) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[y:y + height, x:x + width]), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def sample_keys(num_clips: int, num_entries: int, seed: int = 0) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [(0, int(rng.integers(num_entries)), int(rng.integers(2**31))) for _ in range(num_clips)]


def raw_decord(source: VideoSource, keys) -> float:
    """Clips/s of plain decord decoding the loader's frame indices (open + get_batch per clip)."""
    import decord

    plans = [(source.entries[i].path, source.frame_indices(i, np.random.default_rng(s)).tolist()) for _, i, s in keys]
    start = time.perf_counter()
    for path, indices in plans:
        decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1).get_batch(indices).asnumpy()
    return len(plans) / (time.perf_counter() - start)


def loader_rate(dataset: MaskedClipDataset, keys, timed_keys, batch_size: int, workers: int) -> float:
    """Clips/s of a DataLoader over ``keys`` then ``timed_keys``, in batches, timed over ``timed_keys`` only.

    The workers start together, so their first batches arrive together: the clock starts when the last of
    those (one per worker) arrives, and ``timed_keys`` must be a whole number of rounds of batches over the
    workers, so every worker contributes the same number of timed batches.
    """
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    timed = [timed_keys[i:i + batch_size] for i in range(0, len(timed_keys), batch_size)]
    assert len(batches) == max(1, workers) and len(timed) % max(1, workers) == 0, (len(batches), len(timed))
    order = with_next_keys(batches + timed, workers)  # the read-ahead hints the training sampler gives
    loader = DataLoader(dataset, batch_sampler=order, num_workers=workers, collate_fn=collate,
                        worker_init_fn=init_loader_worker if workers else None)  # as in training
    it = iter(loader)
    for _ in batches:
        next(it)
    start, clips = time.perf_counter(), 0
    for batch in it:
        clips += batch["clip"].shape[0]
    return clips / (time.perf_counter() - start)


def one_round(source: VideoSource, args, seed: int) -> dict[str, float]:
    """Each loader's clips/s divided by the mean raw clips/s measured just before and just after it."""
    mask = {"encoder": MaskGenerator("tube", 0.9, 0.75)}

    def dataset(**kw) -> MaskedClipDataset:
        return MaskedClipDataset([source], mask, (2, 16, 16), 60.0, **kw)

    warmup = sample_keys(2 * args.batch_size, 1, seed + 1000)  # start-up batches: never timed
    timed = sample_keys(args.clips, 1, seed)

    def run(workers: int, repeat: int = 1, isolate: bool = True) -> float:
        """Clips/s; with ``repeat``, batches of ``batch_size // repeat`` keys decode the same windows as without."""
        batch, n = args.batch_size // repeat, max(1, workers)
        return loader_rate(dataset(isolate=isolate, repeat=repeat), warmup[:n * batch], timed, batch, workers)

    runs = {f"loader_{w}w": lambda w=w: run(w) for w in args.workers}
    runs["loader_1w_in_worker"] = lambda: run(1, isolate=False)
    if args.repeat > 1:
        runs[f"loader_1w_repeat{args.repeat}"] = lambda: run(1, repeat=args.repeat)
    ratios, before = {}, raw_decord(source, timed)
    for name, measure in runs.items():
        rate = measure()
        after = raw_decord(source, timed)
        ratios[name] = rate / ((before + after) / 2)
        before = after
    return ratios


def summarize(rounds: list[dict[str, float]], repeat: int) -> dict:
    """Median over rounds of each loader/raw ratio, and of the derived isolated / in-worker and repeat ratios."""
    derived = []
    for r in rounds:
        d = dict(r)
        if "loader_1w" in r:
            d["isolated_vs_in_worker"] = r["loader_1w"] / r["loader_1w_in_worker"]
            if f"loader_1w_repeat{repeat}" in r:
                d[f"repeat{repeat}_vs_no_repeat"] = r[f"loader_1w_repeat{repeat}"] / r["loader_1w"]
        derived.append(d)
    return {name: {"median": float(np.median([d[name] for d in derived])), "rounds": [d[name] for d in derived]}
            for name in derived[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="*", help="video files (default: synthetic 320x240 and 640x480)")
    parser.add_argument("--clips", type=int, default=32,
                        help="timed clips per measurement: a multiple of batch size x the most workers")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of the whole sequence (median reported)")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=4, help="repeated sampling factor to compare with 1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    unit = args.batch_size * max([1, *args.workers])
    if args.clips % unit or args.batch_size % max(1, args.repeat):
        parser.error(f"--clips must be a multiple of {unit} (batch size x the most workers) and --batch-size of "
                     f"--repeat, so that every worker times the same number of whole batches")
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="vmim_bench_"))
    videos = args.videos or [str(make_video(tmp / f"v{w}x{h}.mp4", w, h)) for w, h in ((320, 240), (640, 480))]
    results = []
    for video in videos:
        source = VideoSource([Entry(str(Path(video).resolve()), 0)], args.num_frames, args.stride, args.size)
        raw = raw_decord(source, sample_keys(args.clips, 1, seed=99))
        rounds = [one_round(source, args, seed) for seed in range(args.rounds)]
        results.append({"video": video, "raw_decord_clips_per_s": raw, **summarize(rounds, args.repeat)})
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    labels = {f"loader_{w}w": f"loader, {w} workers, vs raw decord" for w in args.workers}
    labels.update(loader_1w_in_worker="loader, 1 worker, decoding in the worker, vs raw decord",
                  isolated_vs_in_worker="1 worker: decoding in a child process vs in the worker",
                  **{f"loader_1w_repeat{args.repeat}": f"loader, 1 worker, repeat x{args.repeat}, vs raw decord",
                     f"repeat{args.repeat}_vs_no_repeat": f"1 worker: repeat x{args.repeat} vs no repetition"})
    for row in results:
        print(f"{Path(row['video']).name}: raw decord {row['raw_decord_clips_per_s']:.1f} clips/s "
              f"(median of {args.rounds} rounds; each round's figure in brackets)")
        for name, label in labels.items():
            if name in row:
                rounds = " ".join(f"{r:.2f}" for r in row[name]["rounds"])
                print(f"  {label}: {row[name]['median']:.2f}x  [{rounds}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
