#!/usr/bin/env python
"""Benchmark one pretraining step (forward, backward, optimizer) for a config, against baselines in the same run.

Model size, input shape, masks, targets, heads and precision all come from the config (plus overrides). Inputs are
random uint8 clips with masks from the config's generators, so the numbers measure the model and the step, not the
data loader (see tools/bench_data.py for that). The first ``--warmup`` steps are excluded (oneDNN / cuDNN set-up),
and variants are timed in interleaved rounds so that machine noise hits them alike. Variants:

* ``config``: the step as configured;
* ``all_visible`` (default on): every token visible to the encoder (mask ratio ~0), the MAE speed-up baseline;
* ``full_decoder`` (on when the config has a decoder mask): decoder_masking off and every decoder_kept target
  predicting all encoder-masked tokens, the VideoMAE V2 decoder-masking baseline.

``--against REV`` times the same config in a git worktree of commit REV and in this checkout, each by its own
tools/bench_pretrain.py in a fresh process, alternating per round: a same-run A/B of a code change, both sides
measured the same way.

    python tools/bench_pretrain.py --config configs/demo/digits.yaml [key=value ...] [--json] [--against HEAD~1]
"""

from __future__ import annotations

import argparse
import os
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vmim.config import load_config
from vmim.engine.optim import build_optimizer
from vmim.engine.precision import autocast, resolve_device, resolve_precision
from vmim.masking import build_mask_generators
from vmim.meta_arch import build_method

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """One variant's model, optimizer and fixed batch; :meth:`run` times some steps."""

    def __init__(self, cfg, modality: str):
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(0)
        self.model = build_method(cfg).to(self.device).train()
        self.optimizer = build_optimizer(self.model, cfg.optim, cfg.data.batch_size)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        frames = 1 if modality == "image" else cfg.data.num_frames
        b, s = cfg.data.batch_size, cfg.data.img_size
        clip = torch.randint(0, 256, (b, cfg.model.in_chans, frames, s, s), dtype=torch.uint8, device=self.device)
        self.grid = self.model.backbone.grid(clip.shape)
        rng = np.random.default_rng(0)
        masks = {name: torch.from_numpy(np.stack([gen(self.grid, rng) for _ in range(b)])).to(self.device)
                 for name, gen in build_mask_generators(cfg).items()}
        self.batch = {"clip": clip, "masks": masks}
        self.info = {"modality": modality, "batch": b, "input": [frames, s, s], "device": str(self.device),
                     "precision": self.precision, "tokens": int(np.prod(self.grid)),
                     "visible_tokens": int(np.prod(self.grid)) - int(masks["encoder"][0].sum())}
        if "decoder" in masks:
            self.info["decoder_kept_tokens"] = int((~masks["decoder"][0]).sum())
        self.times: list[float] = []

    def run(self, steps: int, warmup: int) -> None:
        for i in range(warmup + steps):
            _sync(self.device)
            start = time.perf_counter()
            with autocast(self.device, self.precision):
                loss = self.model(self.batch)["loss"]
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            _sync(self.device)
            if i >= warmup:
                self.times.append(time.perf_counter() - start)

    def result(self) -> dict:
        step = statistics.median(self.times)
        return {**self.info, "step_s": step, "clips_per_s": self.info["batch"] / step}


def variant_overrides(cfg, name: str) -> list[str]:
    if name == "all_visible":
        return ["masking.ratio_video=1e-9", "masking.ratio_image=1e-9"] if cfg.masking.kind != "running_cell" else []
    if name == "full_decoder":
        return ["decoder_masking.kind=none"] + [f"targets.{n}.token_set=masked" for n, t in cfg.targets.items()
                                                if t.token_set == "decoder_kept"]
    return []


def bench_subprocess(tree: Path, config: str, overrides: list[str], args, modality: str) -> float:
    """Median step time of ``config`` measured by ``tree``'s own tools/bench_pretrain.py in a fresh process."""
    cmd = [sys.executable, "tools/bench_pretrain.py", "--config", config, "--modality", modality, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--no-baseline", "--json", *overrides]
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    if out.returncode:
        raise RuntimeError(f"bench in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)["results"][0]["step_s"]


def run_against(rev: str, args, modality: str) -> tuple[float, float]:
    """(step time at commit ``rev``, step time of this checkout), each measured the same way: its own bench in a
    fresh process (the rev in a temporary git worktree), one right after the other."""
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            theirs = bench_subprocess(tree, args.against_config or args.config,
                                      args.against_overrides or args.overrides, args, modality)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    return theirs, bench_subprocess(REPO, args.config, args.overrides, args, modality)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--modality", choices=["video", "image", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of steps per variant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-visible and full-decoder baselines")
    parser.add_argument("--against", metavar="REV", help="also time this config at git commit REV (same-run A/B)")
    parser.add_argument("--against-config", help="config path at REV (default: --config)")
    parser.add_argument("--against-overrides", nargs="*", help="overrides at REV (default: the same)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    names = ["config"]
    if not args.no_baseline:
        names += ["all_visible"] if variant_overrides(cfg, "all_visible") else []
        names += ["full_decoder"] if cfg.decoder_masking.kind != "none" else []
    results = []
    for modality in (["video", "image"] if args.modality == "both" else [args.modality]):
        timers = {n: StepTimer(load_config(args.config, args.overrides + variant_overrides(cfg, n)), modality)
                  for n in names}
        against, ours = [], []
        for _ in range(args.rounds):
            for timer in timers.values():
                timer.run(args.steps, args.warmup)
            if args.against:
                theirs, mine = run_against(args.against, args, modality)
                against.append(theirs)
                ours.append(mine)
        result = timers["config"].result()
        for n in names[1:]:
            result[f"{n}_step_s"] = timers[n].result()["step_s"]
            result[f"speedup_vs_{n}"] = result[f"{n}_step_s"] / result["step_s"]
        if against:
            result["against"] = args.against
            result["against_step_s"] = statistics.median(against)
            result["subprocess_step_s"] = statistics.median(ours)  # this checkout, timed as the rev is
            result["speedup_vs_against"] = result["against_step_s"] / result["subprocess_step_s"]
        results.append(result)
    if args.json:
        print(json.dumps({"config": args.config, "backbone": cfg.model.backbone, "results": results}, indent=2))
        return 0
    print(f"{cfg.model.backbone} | {results[0]['device']} | {results[0]['precision']} | batch {cfg.data.batch_size}")
    for r in results:
        line = (f"{r['modality']:>5} {'x'.join(map(str, r['input']))}: {r['step_s'] * 1000:8.1f} ms/step "
                f"{r['clips_per_s']:8.1f} clips/s ({r['visible_tokens']}/{r['tokens']} visible")
        line += f", decoder keeps {r['decoder_kept_tokens']})" if "decoder_kept_tokens" in r else ")"
        for key in [k for k in r if k.startswith("speedup_vs_")]:
            name = key.removeprefix("speedup_vs_")
            label = r["against"] if name == "against" else name
            line += f" | {r[key]:.2f}x vs {label} ({r[f'{name}_step_s'] * 1000:.1f} ms"
            line += f" vs {r['subprocess_step_s'] * 1000:.1f} ms here, both in fresh processes)" if name == "against" \
                else ")"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
