#!/usr/bin/env python
"""Benchmark one pretraining step (forward, backward, optimizer) for a config, against baselines in the same run.

Model size, input shape, masks, targets, heads and precision all come from the config (plus overrides). Inputs are
random uint8 clips with masks from the config's generators, so the numbers measure the model and the step, not the
data loader (see tools/bench_data.py for that); a method base without ``data.datasets`` gets a placeholder dataset
(``data.datasets.digits_clips``), never read. The first ``--warmup`` steps are excluded (oneDNN / cuDNN set-up),
and variants are timed in interleaved rounds so that machine noise hits them alike. Step time is the median. Variants:

* ``config``: the step as configured;
* ``all_visible`` (default on): every token visible to the encoder (mask ratio ~0), the MAE speed-up baseline;
* ``full_decoder`` (on when the config has a decoder mask): decoder_masking off and every decoder_kept target
  predicting all encoder-masked tokens, the VideoMAE V2 decoder-masking baseline;
* ``baseline`` (``--baseline-config PATH`` [``--baseline-overrides k=v ...``]): another config's step (e.g. VideoMAE
  ViT-B against MaskFeat MViT-S) at this config's input: its data.img_size, data.num_frames, data.batch_size,
  train.precision and train.device are forced to this config's (printed, with the values they replace);
  ``--baseline-own-size`` leaves it its own data.img_size and data.num_frames (a low-resolution method against one at
  full resolution, per sample). Give ``--baseline-overrides`` after the main config's own overrides: it takes every
  ``k=v`` that follows.

* ``reference`` (``--baseline videomae``): the model a user would otherwise run, at this config's shapes (its ViT
  size, patch, tubelet, decoder, input, batch and encoder mask): VideoMAE's own pre-training step rebuilt from timm
  blocks in ``tools/reference_videomae.py`` (written-out attention, decoder over every token, targets for every
  token, the per-parameter AdamW loop, the grad norm and ``loss.item()`` every step). Video only.

``--precisions fp32 bf16`` times every variant in each precision in the same run (the config's own by default).
``speedup_vs_X`` is X's step time / the config's: above 1 the config is faster than X, below 1 slower. The step of
every vmim variant is the trainer's: forward under autocast, backward, the gradient norm, the optimizer
(``optim.impl``).

Memory, in MiB (2**20 bytes), per variant:

* ``saved_mib``: bytes of the tensors autograd saves for backward in one step (``saved_tensors_hooks``), each
  storage counted once, parameters' own storages left out: the activation memory a step holds at the end of its
  forward. Deterministic and device-independent for a given precision (bf16 autocast saves bf16 activations and
  counts its bf16 weight copies). Leaves out transients (attention scores freed right away, backward's buffers,
  allocator caching), and with model.grad_checkpointing what the checkpointed blocks keep (their own hooks hide
  it). Measured in the first warm-up step (an extra untimed step with ``--warmup 0``).
* ``state_mib``: parameters + gradients + optimizer state (AdamW: 2 moments) + buffers: what a step adds to them
  makes the peak.
* ``cuda_peak_mib`` (CUDA): ``torch.cuda.max_memory_allocated`` over the variant's steps (peak counters reset
  before them), minus what was allocated when they started, plus this variant's resident tensors then (model,
  optimizer state, batch): the variant's allocator peak as if it ran alone (other variants share the device).
  Excludes the CUDA context and cached-but-free blocks (``max_memory_reserved`` is higher).
* ``peak_rss_mib`` (CPU, unless ``--no-rss``; PyTorch has no CPU allocator peak counter): the variant alone in a
  fresh process (same config, overrides, environment and threads; 1 warm-up + 1 step, after the imports): its peak
  resident set (Linux VmHWM, reset to the current RSS right before the model is built) minus its resident set
  then. Real memory: model, batch, optimizer state, activations, transients, allocator and oneDNN caches; page
  granular, and glibc may keep freed memory resident. Costs one extra process per variant (after the timing, so it
  does not disturb it). Off Linux it falls back to ``getrusage`` ru_maxrss, the lifetime peak (imports included).

``--against REV`` times the same config in a git worktree of commit REV and in this checkout, each by its own
tools/bench_pretrain.py in a fresh process, alternating per round: a same-run A/B of a code change, both sides
measured the same way.

    python tools/bench_pretrain.py --config configs/demo/digits.yaml [key=value ...] [--json] [--against HEAD~1]
    python tools/bench_pretrain.py --config configs/methods/maskfeat_mvit_s.yaml --modality video \\
        --baseline-config configs/methods/videomae_vit_b.yaml data.batch_size=1 train.precision=fp32
    python tools/bench_pretrain.py --config configs/methods/videomae_vit_b.yaml --modality video --baseline videomae \\
        --precisions fp32 bf16 --rounds 3 data.batch_size=1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vmim.config import ConfigError, load_config
from vmim.engine.compile import compile_blocks
from vmim.engine.optim import build_optimizer
from vmim.engine.precision import autocast, resolve_device, resolve_precision
from vmim.engine.throughput import measure_matmul_tflops, peak_tflops, step_flops
from vmim.masking import Masks, build_mask_generators, draw_masks
from vmim.meta_arch import build_method
from vmim.models.vit import VIT_SIZES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_videomae import ReferenceStep, ReferenceVideoMAE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIB = 2 ** 20
PLACEHOLDER_DATASET = "data.datasets.digits_clips.weight=1"
"""Added to a config without datasets (a method base): validation needs one, the bench never reads it."""
PEAK_SECONDS = 2.0
"""CPU: how long the matmul peak (MFU's denominator) is measured, the best product counting (noise only slows one)."""
FORCED_KEYS = ("data.img_size", "data.num_frames", "data.batch_size", "train.precision", "train.device")
"""Keys a ``--baseline-config`` takes from the main config, so that both steps see the same input."""


TEACHER_MS = "perf/teacher_ms/"


def stand_in_teachers(cfg: Any, folder: Path) -> tuple[list[str], list[str]]:
    """Random-init stand-ins for teacher targets whose run is not on this machine (MVD's stage-1 runs): the backbone of
    the shipped config whose ``output_dir`` is that path, saved as one of our checkpoints in ``folder``. Returns
    (overrides pointing the targets at them, one description line each). A teacher's cost depends on its
    architecture, not on its weights.

    Raises:
        SystemExit: a missing teacher path that no shipped config produces.
    """
    from vmim.config import config_to_yaml, video_grid
    from vmim.models import create_backbone

    producers = {}
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        try:
            producers.setdefault(str(Path(load_bench_config(str(path), [])[0].output_dir)), path)
        except Exception:  # finetune configs, bases that need keys: not producers of pretraining runs
            continue
    overrides, lines = [], []
    for name, target in cfg.targets.items():
        if target.kind != "teacher" or target.timm_model or Path(target.path).exists():
            continue
        if str(Path(target.path)) not in producers:
            raise SystemExit(f"targets.{name}.path: {target.path} does not exist and no shipped config writes it")
        source = producers[str(Path(target.path))]
        teacher_cfg, _ = load_bench_config(str(source), [])
        torch.manual_seed(0)
        net = create_backbone(teacher_cfg.model, video_grid(teacher_cfg))
        file = folder / f"{name}.pt"
        torch.save({"model": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                    "config": config_to_yaml(teacher_cfg), "task": "pretrain", "step": 0}, file)
        overrides.append(f"targets.{name}.path={file}")
        lines.append(f"stand-in teacher {name}: random-init {teacher_cfg.model.backbone} (tubelet "
                     f"{teacher_cfg.model.tubelet_size}) of {source.relative_to(REPO)}")
        del net
    return overrides, lines


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_bench_config(path: str, overrides: list[str]) -> tuple[Any, list[str]]:
    """(config, the overrides it was loaded with): ``overrides`` plus a placeholder dataset if the file has none."""
    try:
        return load_config(path, overrides), list(overrides)
    except ConfigError as err:
        if err.key != "data.datasets":
            raise
    overrides = [*overrides, PLACEHOLDER_DATASET]
    return load_config(path, overrides), overrides


def _get(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _storage_bytes(tensors, seen: set[int]) -> int:
    """Bytes of the storages under ``tensors`` not in ``seen`` (data pointers, updated)."""
    total = 0
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


class SavedTensors:
    """Context that adds up the tensors autograd saves for backward, each storage once, skipping ``exclude``'s."""

    def __init__(self, exclude: list[torch.Tensor]):
        self.seen = {t.untyped_storage().data_ptr() for t in exclude}
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self.bytes += _storage_bytes([t], self.seen)
        return t

    def __enter__(self) -> "SavedTensors":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


class StepTimer:
    """One variant's model, optimizer and fixed batch; :meth:`run` times some steps and measures memory."""

    def __init__(self, cfg, modality: str):
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        torch.manual_seed(0)
        self.model = build_method(cfg).to(self.device).train()
        self.compiled = compile_blocks(self.model) if cfg.train.compile else 0
        self.optimizer = build_optimizer(self.model, cfg.optim, cfg.data.batch_size)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        frames = 1 if modality == "image" else cfg.data.num_frames
        b, s = cfg.data.batch_size, cfg.data.img_size
        clip = torch.randint(0, 256, (b, cfg.model.in_chans, frames, s, s), dtype=torch.uint8, device=self.device)
        self.grid = self.model.backbone.grid(clip.shape)
        rng = np.random.default_rng(0)
        generators = build_mask_generators(cfg)
        drawn = [draw_masks(generators, self.grid, rng) for _ in range(b)]
        masks = Masks.stack(drawn).to(self.device)
        self.batch = {"clip": clip, "masks": masks}
        encoded = masks.encoder.shape[1]  # the grid's tokens, or a windowed encoder's window tokens
        self.info = {"backbone": cfg.model.backbone, "optimizer": f"AdamW {self.optimizer.impl}", "modality": modality,
                     "batch": b, "input": [frames, s, s],
                     "device": str(self.device), "precision": self.precision, "tokens": int(np.prod(self.grid)),
                     "visible_tokens": encoded - int(masks.encoder[0].sum())}
        if masks.windowed:
            self.info["window_tokens"] = encoded
        if masks.decoder is not None:
            self.info["decoder_kept_tokens"] = int((~masks.decoder[0]).sum())
        self.flops = step_flops(self.model, self.batch)  # model FLOPs of one step (forward + backward)
        if self.device.type == "cpu":  # measured once per process; longer than a run's start-up measurement
            measure_matmul_tflops(self.device, self.precision, seconds=PEAK_SECONDS)
        self.peak = peak_tflops(self.device, self.precision)  # (TFLOP/s, source)
        self.times: list[float] = []
        self.round_medians: list[float] = []
        """Median step of each :meth:`run` call (a round), to bracket ratios against machine drift."""
        self.teacher_ms: dict[str, list[float]] = {}
        self.saved_bytes: int | None = None
        self.first_step_s: float | None = None
        self.cuda_peak_bytes = 0

    def _resident(self) -> list[torch.Tensor]:
        """Tensors this variant keeps between steps: parameters, buffers, optimizer state, batch."""
        state = [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return [*self.model.parameters(), *self.model.buffers(), *state, self.batch["clip"],
                *self.batch["masks"].tensors()]

    def state_bytes(self) -> int:
        """Parameters + their gradients (as many bytes as the parameters that train) + buffers + optimizer state."""
        params = list(self.model.parameters())
        grads = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
        state = [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return _storage_bytes([*params, *self.model.buffers(), *state], set()) + grads

    def step(self, saved: SavedTensors | None = None) -> dict[str, float]:
        """One optimizer step; returns the teachers' forward times in ms (``perf/teacher_ms/<name>``) if any."""
        with autocast(self.device, self.precision), saved if saved is not None else nullcontext():
            out = self.model(self.batch)
            loss = out["loss"]
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)  # as Trainer.optimizer_step: the norm is logged every step
        float(torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], math.inf))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return {k.removeprefix(TEACHER_MS): float(v) for k, v in out.items() if k.startswith(TEACHER_MS)}

    def run(self, steps: int, warmup: int) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            _sync(self.device)
            resident = _storage_bytes(self._resident(), set())
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.first_step_s is None:  # untimed: set-up, compiling, and saved tensors (hooks slow a step)
            saved = None if self.compiled else SavedTensors(list(self.model.parameters()))
            start = time.perf_counter()
            self.step(saved)
            _sync(self.device)
            self.first_step_s = time.perf_counter() - start
            self.saved_bytes = saved.bytes if saved is not None else None
            warmup = max(warmup - 1, 0)
        self.round_medians.append(0.0)
        for i in range(warmup + steps):
            _sync(self.device)
            start = time.perf_counter()
            teacher_ms = self.step()
            _sync(self.device)
            if i >= warmup:
                self.times.append(time.perf_counter() - start)
                self.round_medians[-1] = statistics.median(self.times[len(self.times) - (i - warmup + 1):])
                for name, ms in teacher_ms.items():
                    self.teacher_ms.setdefault(name, []).append(ms)
        if cuda:
            peak = torch.cuda.max_memory_allocated(self.device) - base + resident
            self.cuda_peak_bytes = max(self.cuda_peak_bytes, peak)

    def result(self) -> dict:
        step = statistics.median(self.times)
        out = {**self.info, "step_s": step, "clips_per_s": self.info["batch"] / step, "first_step_s": self.first_step_s,
               "saved_mib": None if self.saved_bytes is None else self.saved_bytes / MIB,
               "state_mib": self.state_bytes() / MIB}
        out.update(step_tflop=self.flops / 1e12, tflops=self.flops / step / 1e12, peak_tflops=self.peak[0],
                   peak_source=self.peak[1], mfu=self.flops / step / 1e12 / self.peak[0])
        if self.compiled:  # the first step compiles; its excess over a compiled step is the compile time
            out.update(compiled_blocks=self.compiled, compile_s=self.first_step_s - step)
        if self.device.type == "cuda":
            out["cuda_peak_mib"] = self.cuda_peak_bytes / MIB
        if self.teacher_ms:  # teacher forwards inside the step (their own timing, the run's autocast)
            out["teacher_ms"] = {n: statistics.median(v) for n, v in self.teacher_ms.items()}
            out["teacher_share"] = sum(out["teacher_ms"].values()) / 1000 / step
        return out


class ReferenceTimer(StepTimer):
    """VideoMAE's own step (:mod:`reference_videomae`) at a vmim config's shapes, on the batch and encoder mask that
    config's :class:`StepTimer` would use (normalized to float as VideoMAE's loader hands it over)."""

    def __init__(self, cfg, modality: str):
        if modality != "video":
            raise SystemExit("--baseline videomae: VideoMAE's model is video only (use --modality video or both)")
        pixel = [t for t in cfg.targets.values() if t.kind == "pixel" and t.head.kind == "decoder"]
        if cfg.model.backbone not in VIT_SIZES or len(cfg.targets) != 1 or not pixel or cfg.model.dense:
            raise SystemExit(f"--baseline videomae needs a visible-only ViT config with one pixel target and a decoder "
                             f"head (VideoMAE's layout); {cfg.model.backbone} with targets {list(cfg.targets)} is not")
        mine = StepTimer(cfg, modality)  # the same batch and mask as the vmim variant
        self.device, self.precision, self.info = mine.device, mine.precision, dict(mine.info)
        default_adamw = "foreach" if self.device.type == "cuda" else "for_loop"  # torch's default, the reference's
        self.info.update(backbone=f"VideoMAE reference {cfg.model.backbone}", optimizer=f"AdamW {default_adamw}")
        size, head = VIT_SIZES[cfg.model.backbone], pixel[0].head
        mean = torch.tensor(cfg.data.mean, device=self.device).view(1, -1, 1, 1, 1)
        std = torch.tensor(cfg.data.std, device=self.device).view(1, -1, 1, 1, 1)
        videos = (mine.batch["clip"].float() / 255 - mean) / std
        mask = mine.batch["masks"].encoder
        self.flops, self.peak = mine.flops, mine.peak  # the same architecture: the same model FLOPs
        del mine
        torch.manual_seed(0)
        model = ReferenceVideoMAE(cfg.data.img_size, cfg.data.num_frames, cfg.model.patch_size,
                                  cfg.model.tubelet_size, size.embed_dim, size.depth, size.num_heads, head.dim,
                                  head.depth, head.heads, cfg.model.in_chans).to(self.device).train()
        self.reference = ReferenceStep(model, videos, mask, self.precision)
        self.model, self.optimizer, self.batch = model, self.reference.optimizer, {"clip": videos, "masks": Masks(mask)}
        self.times, self.round_medians, self.teacher_ms, self.saved_bytes, self.cuda_peak_bytes = [], [], {}, None, 0
        self.first_step_s, self.compiled = None, 0

    def step(self, saved: SavedTensors | None = None) -> dict[str, float]:
        with saved if saved is not None else nullcontext():
            loss = self.reference.forward_loss()
        self.reference.backward_and_update(loss)
        return {}


REFERENCES = {"videomae": ReferenceTimer}
"""``--baseline`` choices: the reference models a config can be timed against."""


def with_precision(overrides: list[str], precision: str | None) -> list[str]:
    """``overrides`` run in ``precision`` (None: the config's own)."""
    return overrides if precision is None else [*overrides, f"train.precision={precision}"]


def build_timer(name: str, variant: tuple[str, list[str]], precision: str | None, modality: str,
                reference: str | None) -> StepTimer:
    """The timer of variant ``name`` = (config path, overrides); ``reference`` names the reference model."""
    path, overrides = variant
    cfg = load_config(path, with_precision(overrides, precision))
    return REFERENCES[reference](cfg, modality) if name == "reference" else StepTimer(cfg, modality)


def variant_overrides(cfg, name: str) -> list[str]:
    if name == "all_visible":
        return ["masking.ratio_video=1e-9", "masking.ratio_image=1e-9"] if cfg.masking.kind != "running_cell" else []
    if name == "compiled":
        return ["train.compile=true"]
    if name == "checkpointed":
        return ["model.grad_checkpointing=true"]
    if name == "full_decoder":
        return ["decoder_masking.kind=none"] + [f"targets.{n}.token_set=masked" for n, t in cfg.targets.items()
                                                if t.token_set == "decoder_kept"]
    return []


def bench_subprocess(tree: Path, config: str, overrides: list[str], args, modality: str) -> float:
    """Median step time of ``config`` measured by ``tree``'s own tools/bench_pretrain.py in a fresh process."""
    cmd = [sys.executable, "tools/bench_pretrain.py", "--config", config, "--modality", modality, "--steps",
           str(args.steps), "--warmup", str(args.warmup), "--no-baseline", "--json", *overrides]
    if "--no-rss" in (tree / "tools" / "bench_pretrain.py").read_text():  # older revisions lack the option
        cmd.insert(-len(overrides) or len(cmd), "--no-rss")
    out = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    if out.returncode:
        raise RuntimeError(f"bench in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)["results"][0]["step_s"]


def _proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux) in bytes, None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS to its RSS now (Linux >= 4.0; elsewhere the peak stays the lifetime one)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_bytes() -> int:
    """Peak resident set of this process's address space: VmHWM (Linux), else getrusage's ru_maxrss (which on Linux
    also holds the parent's RSS at fork: not used where VmHWM exists)."""
    hwm = _proc_status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    import resource  # Unix only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def probe_rss(config: str, overrides: list[str], modality: str, reference: str | None = None) -> dict:
    """In this (fresh) process: build one variant (``reference``: that reference model at the config's shapes), run
    1 warm-up step + 1 step, return its peak RSS figures."""
    cfg = load_config(config, overrides)
    device = resolve_device(cfg.train.device)
    if device.type == "cpu":  # the MFU peak's matmuls, cached now, stay out of the variant's peak (briefly: unused)
        measure_matmul_tflops(device, resolve_precision(cfg.train.precision, device), seconds=0.01)
    _reset_peak_rss()
    before = _proc_status_bytes("VmRSS") or _peak_rss_bytes()
    (REFERENCES[reference] if reference else StepTimer)(cfg, modality).run(1, 1)
    peak = _peak_rss_bytes()
    return {"peak_rss_mib": (peak - before) / MIB, "rss_before_mib": before / MIB, "process_peak_rss_mib": peak / MIB}


def rss_subprocess(config: str, overrides: list[str], modality: str, reference: str | None = None) -> dict:
    """:func:`probe_rss` of a variant in a fresh process (same interpreter, environment and thread settings)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--config", str(Path(config).resolve()), "--modality",
           modality, "--probe-rss", *(["--probe-reference", reference] if reference else []), *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"peak-RSS probe failed ({' '.join(cmd)}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def _ratio_words(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def print_table(summary: dict) -> None:
    """The human-readable report of :func:`main`'s JSON object."""
    first = summary["results"][0]
    print(f"{summary['backbone']} | {first['device']} | {first['precision']} | batch {first['batch']} | "
          f"{summary['config']}")
    base = summary.get("baseline")
    if base:
        forced = ", ".join(f"{k}={v}" + (f" (file: {base['replaced'][k]})" if k in base["replaced"] else "")
                           for k, v in base["forced"].items())
        where = "at this config's input" if "data.img_size" in base["forced"] else "at its own input size"
        print(f"baseline: {base['backbone']} ({base['config']}) {where}, forced: {forced}")
    mem_key, mem_label = ("cuda_peak_mib", "CUDA peak MiB") if first["device"].startswith("cuda") \
        else ("peak_rss_mib", "peak RSS MiB")
    for r in summary["results"]:
        print(f"{r['modality']} {'x'.join(map(str, r['input']))} {r['precision']} ({r['optimizer']})")
        print(f"  {'variant':<40}{'ms/step':>10}{'clips/s':>9}{'visible/tokens':>16}{'saved MiB':>11}"
              f"{'state MiB':>11}{mem_label:>15}{'TFLOP/s':>9}{'MFU':>7}  config speed-up")
        for name, v in r["variants"].items():
            label = f"baseline ({v['backbone']})" if name == "baseline" else name
            label = f"reference ({summary['reference']}, {v['optimizer']})" if name == "reference" else label
            tokens = f"{v['visible_tokens']}/{v['tokens']}"
            mem = f"{v[mem_key]:.1f}" if mem_key in v else "-"
            ratio = "" if name == "config" else f"{r[f'speedup_vs_{name}']:.2f}x"
            note = f"  (decoder keeps {v['decoder_kept_tokens']})" if "decoder_kept_tokens" in v else ""
            saved = "-" if v["saved_mib"] is None else f"{v['saved_mib']:.1f}"
            print(f"  {label:<40}{v['step_s'] * 1000:10.1f}{v['clips_per_s']:9.2f}{tokens:>16}{saved:>11}"
                  f"{v['state_mib']:11.1f}{mem:>15}{v['tflops']:9.3f}{v['mfu']:7.1%}  {ratio}{note}")
        if "baseline" in r["variants"]:
            b = r["variants"]["baseline"]
            print(f"  => {r['backbone']} vs {b['backbone']}: {r['speedup_vs_baseline']:.2f}x the baseline's speed "
                  f"({_ratio_words(r['speedup_vs_baseline'])}), {r['step_s'] * 1000:.1f} vs "
                  f"{b['step_s'] * 1000:.1f} ms/step")
        if "compiled" in r["variants"]:
            c = r["variants"]["compiled"]
            print(f"  => train.compile: {_ratio_words(r['step_s'] / c['step_s'])} per step after "
                  f"{c['compile_s']:.1f} s of compiling {c['compiled_blocks']} blocks (its first step "
                  f"{c['first_step_s']:.1f} s)")
        if "checkpointed" in r["variants"]:
            c, plain = r["variants"]["checkpointed"], r["variants"]["config"]
            peaks = [f"{plain[k]:.0f} -> {c[k]:.0f} MiB" for k in ("peak_rss_mib", "cuda_peak_mib") if k in c]
            print(f"  => activation checkpointing: {c['step_s'] / plain['step_s'] - 1:+.0%} step time, saved "
                  f"{plain['saved_mib']:.0f} -> {c['saved_mib']:.0f} MiB, peak {' / '.join(peaks) or '-'}")
        if "reference" in r["variants"]:
            ref = r["variants"]["reference"]
            rounds = ", ".join(f"{x:.2f}x" for x in r["speedup_vs_reference_rounds"])
            print(f"  => vmim vs {ref['backbone']}: {_ratio_words(r['speedup_vs_reference'])} in {r['precision']} "
                  f"({r['step_s'] * 1000:.1f} vs {ref['step_s'] * 1000:.1f} ms/step; per round: {rounds})")
        for name, v in r["variants"].items():
            if "teacher_ms" in v:
                each = ", ".join(f"{t} {ms:.1f} ms" for t, ms in v["teacher_ms"].items())
                print(f"  => {name}: teachers {each} per step = {v['teacher_share']:.0%} of its "
                      f"{v['step_s'] * 1000:.1f} ms step")
        if "against" in r:
            print(f"  => vs {r['against']}: {r['speedup_vs_against']:.2f}x ({r['against_step_s'] * 1000:.1f} ms vs "
                  f"{r['subprocess_step_s'] * 1000:.1f} ms here, both in fresh processes)")
    print(f"TFLOP/s = model FLOPs of a step (vmim.engine.throughput.step_flops: {first['step_tflop'] * 1000:.3g} "
          f"GFLOP for the config) / step time; MFU against {first['peak_tflops']:.3f} TFLOP/s ({first['peak_source']})")
    peak = ("CUDA peak = max_memory_allocated over its steps, as if alone" if mem_key == "cuda_peak_mib" else
            "peak RSS = the variant alone in a fresh process, over its RSS before the model is built")
    print(f"memory: saved = tensors autograd keeps for backward in one step (activations), state = parameters + "
          f"gradients + optimizer state, {peak} (module docstring: what each leaves out)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--modality", choices=["video", "image", "both"], default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of steps per variant")
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-visible and full-decoder baselines")
    parser.add_argument("--baseline-config", metavar="PATH",
                        help="also time this config's step, at --config's input (img_size, frames, batch, precision)")
    parser.add_argument("--baseline-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides of --baseline-config (give them after the main config's overrides)")
    parser.add_argument("--baseline-own-size", action="store_true",
                        help="the --baseline-config keeps its own data.img_size and data.num_frames (e.g. FastMIM at "
                             "128 px against MAE at 224 px: per-sample cost at each method's resolution)")
    parser.add_argument("--baseline", choices=sorted(REFERENCES), dest="reference",
                        help="also time a reference model at this config's shapes (videomae: VideoMAE's own step)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "fp16"], metavar="P",
                        help="time every variant in each of these precisions (default: the config's train.precision)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the config with train.compile=true (and report its compile time)")
    parser.add_argument("--checkpointing", action="store_true",
                        help="also time the config with model.grad_checkpointing=true (activation checkpointing)")
    parser.add_argument("--no-rss", action="store_true", help="CPU: skip the peak-RSS probes (one process each)")
    parser.add_argument("--stand-in-teachers", action="store_true",
                        help="teacher runs not on this machine: random-init stand-ins of the configs that write them")
    parser.add_argument("--probe-rss", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe-reference", help=argparse.SUPPRESS)
    parser.add_argument("--against", metavar="REV", help="also time this config at git commit REV (same-run A/B)")
    parser.add_argument("--against-config", help="config path at REV (default: --config)")
    parser.add_argument("--against-overrides", nargs="*", help="overrides at REV (default: the same)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    if args.probe_rss:
        print(json.dumps(probe_rss(args.config, args.overrides, args.modality, args.probe_reference)))
        return 0
    cfg, overrides = load_bench_config(args.config, args.overrides)
    stand_ins = tempfile.TemporaryDirectory() if args.stand_in_teachers else None
    if stand_ins is not None:
        extra, lines = stand_in_teachers(cfg, Path(stand_ins.name))
        args.overrides = [*args.overrides, *extra]
        cfg, overrides = load_bench_config(args.config, args.overrides)
        for line in lines:
            print(line, file=sys.stderr)
    names = ["config"] + (["compiled"] if args.compile else []) + (["checkpointed"] if args.checkpointing else [])
    if not args.no_baseline:
        names += ["all_visible"] if variant_overrides(cfg, "all_visible") else []
        names += ["full_decoder"] if cfg.decoder_masking.kind != "none" else []
    variants = {n: (args.config, overrides + variant_overrides(cfg, n)) for n in names}
    summary: dict[str, Any] = {"config": args.config, "backbone": cfg.model.backbone, "overrides": overrides}
    if args.baseline_config:
        keys = FORCED_KEYS[2:] if args.baseline_own_size else FORCED_KEYS
        forced = {key: _get(cfg, key) for key in keys}
        base_cfg, base_overrides = load_bench_config(
            args.baseline_config, args.baseline_overrides + [f"{k}={v}" for k, v in forced.items()])
        try:
            own, _ = load_bench_config(args.baseline_config, args.baseline_overrides)
            replaced = {k: _get(own, k) for k in keys if _get(own, k) != forced[k]}
        except ConfigError:  # valid only at the forced input
            replaced = {}
        variants["baseline"] = (args.baseline_config, base_overrides)
        summary["baseline"] = {"config": args.baseline_config, "backbone": base_cfg.model.backbone,
                               "overrides": base_overrides, "forced": forced, "replaced": replaced}
    if args.reference:
        if args.modality == "image":
            raise SystemExit(f"--baseline {args.reference}: its model is video only (use --modality video or both)")
        variants["reference"] = (args.config, overrides)
        summary["reference"] = args.reference
    results = []
    modalities = ["video", "image"] if args.modality == "both" else [args.modality]
    for modality, precision in [(m, p) for m in modalities for p in args.precisions or [None]]:
        timers = {n: build_timer(n, variants[n], precision, modality, args.reference)
                  for n in variants if n != "reference" or modality == "video"}
        against, ours = [], []
        for _ in range(args.rounds):
            for timer in timers.values():
                timer.run(args.steps, args.warmup)
            if args.against:
                theirs, mine = run_against(args.against, args, modality)
                against.append(theirs)
                ours.append(mine)
        measured = {n: timer.result() for n, timer in timers.items()}
        timers_rounds = {n: timer.round_medians for n, timer in timers.items()}  # same rounds, interleaved
        device = timers["config"].device
        del timers, timer
        if device.type == "cpu" and not args.no_rss:
            for n in measured:
                path, ovr = variants[n]
                reference = args.reference if n == "reference" else None
                measured[n].update(rss_subprocess(path, with_precision(ovr, precision), modality, reference))
        result = dict(measured["config"])
        for n in list(measured)[1:]:
            result[f"{n}_step_s"] = measured[n]["step_s"]
            result[f"speedup_vs_{n}"] = result[f"{n}_step_s"] / result["step_s"]
            result[f"speedup_vs_{n}_rounds"] = [theirs / mine for theirs, mine in
                                                zip(timers_rounds[n], timers_rounds["config"])]
        if against:
            result["against"] = args.against
            result["against_step_s"] = statistics.median(against)
            result["subprocess_step_s"] = statistics.median(ours)  # this checkout, timed as the rev is
            result["speedup_vs_against"] = result["against_step_s"] / result["subprocess_step_s"]
        result["variants"] = measured
        results.append(result)
    summary["results"] = results
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
