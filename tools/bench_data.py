#!/usr/bin/env python
"""Data-loader throughput against the raw decord decode of exactly the same frames.

For H.264 clips (default: two synthetic 10 s videos, 320x240 and 640x480, 30 fps, made with PyAV on first use)
it times, in one run:
  * raw: ``decord.VideoReader(path, num_threads=1).get_batch(indices)`` in this process, opening the file per
    clip, for the frame indices the loader itself picks (same seeds), timed before and after the loader runs and
    averaged (this VM's speed drifts by 10-20 % between runs);
  * the full loader (decode + clip sampling + multi-scale crop to 224 + masking + collate) with 0, 1, 2 workers;
and prints loader clips/s and its ratio to raw clips/s; then, with 1 worker, decoding in the worker itself
(``data.decode_isolation=false``) against the default child process, and repeated sampling (``--repeat`` clips
per decode) against no repetition. The first batch (worker start-up) is not timed.

    python tools/bench_data.py [--videos a.mp4 b.mp4] [--clips 48] [--json]
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
from vmim.data.pretrain_dataset import MaskedClipDataset, collate
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


def loader_rate(dataset: MaskedClipDataset, keys, batch_size: int, workers: int) -> float:
    batches = [keys[i:i + batch_size] for i in range(0, len(keys), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                        prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # start-up and first batch: not timed
    start, clips = time.perf_counter(), 0
    for batch in it:
        clips += batch["clip"].shape[0]
    return clips / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", nargs="*", help="video files (default: synthetic 320x240 and 640x480)")
    parser.add_argument("--clips", type=int, default=48, help="clips per measurement")
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--repeat", type=int, default=4, help="repeated sampling factor to compare with 1")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="vmim_bench_"))
    videos = args.videos or [str(make_video(tmp / f"v{w}x{h}.mp4", w, h)) for w, h in ((320, 240), (640, 480))]
    results = []
    for video in videos:
        source = VideoSource([Entry(str(Path(video).resolve()), 0)], args.num_frames, args.stride, args.size)
        dataset = MaskedClipDataset([source], MaskGenerator("tube", 0.9, 0.75), (2, 16, 16), 60.0, isolate=True)
        keys = sample_keys(args.clips + args.batch_size, 1)
        raw_before = raw_decord(source, keys[args.batch_size:])
        rates = {workers: loader_rate(dataset, keys, args.batch_size, workers) for workers in args.workers}
        raw = (raw_before + raw_decord(source, keys[args.batch_size:])) / 2  # brackets the loader: drift cancels
        row = {"video": video, "raw_decord_clips_per_s": raw}
        for workers, rate in rates.items():
            row[f"loader_{workers}w_clips_per_s"] = rate
            row[f"loader_{workers}w_vs_raw"] = rate / raw
        in_worker = MaskedClipDataset([source], MaskGenerator("tube", 0.9, 0.75), (2, 16, 16), 60.0, isolate=False)
        row["loader_1w_in_worker_clips_per_s"] = loader_rate(in_worker, keys, args.batch_size, 1)
        row["isolated_vs_in_worker"] = row.get("loader_1w_clips_per_s", float("nan")) / row[
            "loader_1w_in_worker_clips_per_s"]
        if args.repeat > 1:  # same clip count, 1/repeat of the decodes
            repeated = MaskedClipDataset([source], MaskGenerator("tube", 0.9, 0.75), (2, 16, 16), 60.0,
                                         repeat=args.repeat, isolate=True)
            per_batch = max(1, args.batch_size // args.repeat)
            rep_keys = sample_keys((args.clips + args.batch_size) // args.repeat, 1, seed=1)
            row[f"loader_1w_repeat{args.repeat}_clips_per_s"] = loader_rate(repeated, rep_keys, per_batch, 1)
            row[f"repeat{args.repeat}_vs_no_repeat"] = (row[f"loader_1w_repeat{args.repeat}_clips_per_s"]
                                                         / row.get("loader_1w_clips_per_s", float("nan")))
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for row in results:
        print(f"{Path(row['video']).name}: raw decord {row['raw_decord_clips_per_s']:.1f} clips/s")
        for workers in args.workers:
            print(f"  loader, {workers} workers: {row[f'loader_{workers}w_clips_per_s']:.1f} clips/s "
                  f"= {row[f'loader_{workers}w_vs_raw']:.2f}x raw")
        print(f"  loader, 1 worker, decoding in the worker (no child process): "
              f"{row['loader_1w_in_worker_clips_per_s']:.1f} clips/s; isolated = {row['isolated_vs_in_worker']:.2f}x that")
        if args.repeat > 1:
            print(f"  loader, 1 worker, repeat x{args.repeat}: {row[f'loader_1w_repeat{args.repeat}_clips_per_s']:.1f} "
                  f"clips/s = {row[f'repeat{args.repeat}_vs_no_repeat']:.2f}x no repetition")
    return 0


if __name__ == "__main__":
    sys.exit(main())
