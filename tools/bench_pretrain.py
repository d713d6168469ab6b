#!/usr/bin/env python
"""Benchmark one pretraining step (forward, backward, optimizer) for a config.

Model size, input shape, mask ratio, targets and precision all come from the config (plus overrides).
Inputs are random uint8 clips with masks from the config's generator, so the numbers measure the model
and the step, not the data loader (see tools/bench_data.py for that). The first ``--warmup`` steps are
excluded (oneDNN / cuDNN set-up). As a baseline measured in the same run, the same step is timed with
every token visible to the encoder (mask ratio ~0), and the masked/unmasked speed ratio is printed.

    python tools/bench_pretrain.py --config configs/demo/digits.yaml [key=value ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from vmim.config import load_config
from vmim.engine.optim import build_optimizer
from vmim.engine.pretrain import autocast, resolve_device, resolve_precision
from vmim.masking import build_mask_generator
from vmim.models import build_pretrainer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(cfg, modality: str, ratio: float | None, steps: int, warmup: int) -> dict:
    """Median step time for one modality; ``ratio`` overrides the config's mask ratio."""
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    torch.manual_seed(0)
    model = build_pretrainer(cfg).to(device).train()
    optimizer = build_optimizer(model, cfg.optim, cfg.data.batch_size)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if ratio is not None:
        cfg.masking.ratio_video = cfg.masking.ratio_image = ratio
    generator = build_mask_generator(cfg.masking)
    frames = 1 if modality == "image" else cfg.data.num_frames
    b, s = cfg.data.batch_size, cfg.data.img_size
    clip = torch.randint(0, 256, (b, cfg.model.in_chans, frames, s, s), dtype=torch.uint8, device=device)
    grid = model.backbone.grid(clip.shape)
    rng = np.random.default_rng(0)
    mask = torch.from_numpy(np.stack([generator(grid, rng) for _ in range(b)])).to(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with autocast(device, precision):
            loss = model(clip, mask)["loss"]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    n_tokens = int(np.prod(grid))
    visible = n_tokens - int(mask[0].sum())
    return {
        "modality": modality, "batch": b, "input": [frames, s, s], "tokens": n_tokens, "visible_tokens": visible,
        "mask_ratio": 1 - visible / n_tokens, "step_s": step, "clips_per_s": b / step,
        "encoder_tokens_per_s": b * visible / step, "device": str(device), "precision": precision,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--modality", choices=["video", "image", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-tokens-visible baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    results = []
    for modality in (["video", "image"] if args.modality == "both" else [args.modality]):
        masked = time_steps(load_config(args.config, args.overrides), modality, None, args.steps, args.warmup)
        if not args.no_baseline:
            full = time_steps(load_config(args.config, args.overrides), modality, 1e-9, args.steps, args.warmup)
            masked["baseline_all_visible_step_s"] = full["step_s"]
            masked["speedup_vs_all_visible"] = full["step_s"] / masked["step_s"]
        results.append(masked)
    if args.json:
        print(json.dumps({"config": args.config, "backbone": cfg.model.backbone, "results": results}, indent=2))
        return 0
    print(f"{cfg.model.backbone} | {results[0]['device']} | {results[0]['precision']} | batch {cfg.data.batch_size}")
    for r in results:
        line = (f"{r['modality']:>5} {'x'.join(map(str, r['input']))}: {r['step_s'] * 1000:8.1f} ms/step "
                f"{r['clips_per_s']:8.1f} clips/s {r['encoder_tokens_per_s']:10.0f} enc tokens/s "
                f"(mask {r['mask_ratio']:.0%}, {r['visible_tokens']}/{r['tokens']} visible)")
        if "speedup_vs_all_visible" in r:
            line += f" | {r['speedup_vs_all_visible']:.2f}x vs all visible"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
