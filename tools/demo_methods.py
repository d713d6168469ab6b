#!/usr/bin/env python
"""Probe and motion fine-tune figures of the method configs against scratch, on the built-in digits (CPU minutes).

For each method (SimMIM, FastMIM-P, LoMaR by default), its ``configs/methods/`` file is shrunk to the video demo's
scale (``configs/demo/motion_pretrain.yaml``: a ViT-Tiny with 4 px patches and 2-frame tubelets on the 16 px,
4-frame digits motion clips, 20 epochs, fp32) and pretrained without labels; then

* ``vmim probe RUN``: a linear probe of the frozen features on the held-out digits, against the same architecture at
  random init;
* the motion task (``configs/demo/motion_finetune.yaml``: 10 % of the labels, 30 epochs): fine-tuned from the run and
  from scratch with the method's own fine-tuning architecture (relative position bias per block and no absolute
  positions for SimMIM and LoMaR, a class token for FastMIM), both scored with ``vmim eval``.

Method-specific shrinking: SimMIM keeps its 2x2-token mask units at 60 %; FastMIM-P predicts HOG of 4 px cells and
grows its input from 12 to 16 px at epoch 10 (``data.img_size_schedule``); LoMaR draws 4 windows of 3x3 tokens over
both time tokens, 80 % masked. Prints one table; ``--json`` one object.

    python tools/demo_methods.py [--methods simmim lomar] [--out runs/demo_methods] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DEMO_SCALE = [
    "model.backbone=vit_tiny", "model.patch_size=4", "model.tubelet_size=2", "data.img_size=16", "data.num_frames=4",
    "data.batch_size=32", "data.num_workers=1", "data.datasets.digits_motion.split=train", "optim.lr=1.5e-3",
    "optim.min_lr=1e-5", "optim.warmup_epochs=1", "train.epochs=20", "train.precision=fp32", "log.every_steps=20",
    "log.image_every_steps=0", "checkpoint.every_steps=200",
]
"""configs/demo/motion_pretrain.yaml's model size, data, schedule and precision, over a method config."""

METHODS: dict[str, dict] = {
    "simmim": {"config": "configs/methods/simmim_vit_b.yaml",
               "pretrain": [],
               "finetune": ["model.pos_embed=none", "model.rel_pos_bias=per_block", "model.layer_scale=0.1"]},
    "fastmim_p": {"config": "configs/methods/fastmim_p_vit_b.yaml",
                  "pretrain": ["targets.hog.cell_size=4", "targets.hog.head.dim=96", "targets.hog.head.heads=3",
                               "data.img_size_schedule=[{epoch: 0, img_size: 12}, {epoch: 10, img_size: 16}]"],
                  "finetune": ["model.cls_token=true"]},
    "lomar": {"config": "configs/methods/lomar_vit_b.yaml",
              "pretrain": ["masking.window_size=3"],
              "finetune": ["model.pos_embed=none", "model.rel_pos_bias=per_block"]},
}
"""name -> method config, its demo-scale overrides, and the fine-tuning architecture keys that match it."""

PERCENT = re.compile(r"top1 ([0-9.]+)%")


def vmim(*args: str) -> str:
    """Run the vmim CLI; its stdout (stderr shown and an error raised when it fails)."""
    proc = subprocess.run([sys.executable, "-m", "vmim.cli", *args], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"vmim {' '.join(args[:3])} ... failed ({proc.returncode})")
    return proc.stdout


def run_method(name: str, out: Path, seed: int) -> dict:
    method, run = METHODS[name], out / name
    shutil.rmtree(run, ignore_errors=True)
    start = time.time()
    vmim("pretrain", "--config", method["config"], f"output_dir={run / 'pretrain'}", f"train.seed={seed}",
         *DEMO_SCALE, *method["pretrain"])
    vmim("probe", str(run / "pretrain"), "probe.methods=[linear]", "probe.labels_per_class=0")
    results = json.loads((run / "pretrain" / "probe" / "results.json").read_text())
    linear = {r["features"]: 100 * r["mean"] for r in results["results"]}
    pretrained, random_init = linear["pretrained"], linear["random_init"]
    motion = {}
    for start_from, init in (("pretrained", str(run / "pretrain")), ("scratch", "")):
        folder = run / f"from_{start_from}"
        vmim("finetune", "--config", "configs/demo/motion_finetune.yaml", f"init={init}", f"output_dir={folder}",
             f"train.seed={seed}", *method["finetune"])
        motion[start_from] = float(PERCENT.findall(vmim("eval", str(folder)).strip().splitlines()[-1])[0])
    return {"method": name, "config": method["config"], "seed": seed, "probe_pretrained": pretrained,
            "probe_random_init": random_init, "motion_pretrained": motion["pretrained"],
            "motion_scratch": motion["scratch"], "minutes": round((time.time() - start) / 60, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--out", default="runs/demo_methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = [run_method(name, Path(args.out).resolve(), args.seed) for name in args.methods]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'method':<10} {'probe':>8} {'random':>8} {'motion FT':>10} {'scratch':>8} {'min':>5}   (seed {args.seed})")
    for r in rows:
        print(f"{r['method']:<10} {r['probe_pretrained']:>7.2f}% {r['probe_random_init']:>7.2f}% "
              f"{r['motion_pretrained']:>9.2f}% {r['motion_scratch']:>7.2f}% {r['minutes']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
