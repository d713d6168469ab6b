"""Frozen-teacher feature targets (MVD, MR-MAE): a pretrained model's features at chosen blocks, one per student token.

Sources (``path``):

* a vmim run directory, one of our checkpoints, or a ``vmim convert`` file (VideoMAE, MAE, MVD imports), read by
  :func:`vmim.models.loading.read_weights`: the backbone is rebuilt from its recorded architecture and loaded
  strictly; its pixel mean/std are the source run's ``data.mean`` / ``data.std``;
* with ``timm_model`` set: a local weights file (torch pickle or ``.safetensors``; a ``state_dict`` / ``model``
  wrapper is unwrapped) for that timm architecture, built with ``pretrained=False`` (nothing is ever downloaded),
  ``num_classes=0`` and loaded strictly after dropping ``head.*`` keys (the features come from the blocks, as MVD
  drops the head); mean/std from the architecture's timm ``pretrained_cfg``.

``mean`` / ``std`` in the config override the source's. The teacher reads ``(pixels - mean) / std`` of the clean clip.

Which frames (MVD ``time_stride_loss``, hard-wired on there):

* an **image teacher** (a timm model, or a vmim backbone with tubelet 1) sees the FIRST frame of each student tubelet,
  frames ``0, t, 2t, ...``, batched as ``B*T'`` images; its features for frame ``i*t`` become the targets of the
  student's tubelet ``i``;
* a **video teacher** (a vmim backbone with tubelet > 1) sees the whole clip. When the clip's frame count is not a
  multiple of the teacher's tubelet (an image, repeated to the student's tubelet), it sees the first frame alone,
  which its patch embedding repeats to its own tubelet: the same as it would see the image.

Resolution: ``input_size > 0`` resizes every frame to that height (width scaled alike), bilinear with antialiasing
(MVD resizes one crop to the student's and the teacher's size; its H/14 teacher runs at 196); a timm model is built
for that ``img_size``. ``0`` keeps the student's frames; a timm ViT is then built at its default size with
``dynamic_img_size=True`` and interpolates its position table to the frames (timm's own mechanism).

Grid mapping: teacher tokens are laid out on the teacher's ``(t, h, w)`` grid (prefix tokens -- class, registers --
dropped) and mapped onto the student's ``(T', H', W')`` grid in (t, h, w) row-major order. Where the grids differ
(another patch size, tubelet or input size) each block's feature map is resampled per axis group
(:func:`resample_grid`):

* space: an **area mean** when the teacher grid is at least as fine in both axes (``h >= H'``, ``w >= W'``): each
  student token is the mean of the teacher tokens whose cells fall in it -- exact block means for integer factors
  (teacher patch 8 under a student patch 16: the 2x2 mean), adaptive-pooling bins otherwise. Bilinear interpolation
  would equal it at factor 2 but skip teacher tokens beyond it. Else **bilinear** (``align_corners=False``), per frame;
* time (a video teacher only; an image teacher's frames are the student's tubelets): the same rule along time (area
  mean when the teacher has at least as many time steps, else linear), which with bilinear space makes trilinear.

Several ``blocks``: each block's map is resampled (and normalised) on its own, then concatenated along features in the
order given, so ``dim = sum of their widths`` (a ViT: width x len(blocks)). ``final_norm`` applies the teacher's
final norm to the chosen blocks (MVD: False, the last block's raw output). ``norm_features``: LayerNorm without affine
(eps 1e-6) over each block's features, per student token, after resampling (MVD's ``--norm_feature``, off in its
scripts; MaskAlign's per-token whitening).

Cost and isolation: the network sits in a :class:`~vmim.models.frozen.Frozen` wrapper, so it is in eval mode always,
out of ``parameters()`` (optimizer, DDP, parameter counts, EMA copies) and out of ``state_dict()`` (the student's
checkpoint; fine-tuning, probing and ``vmim convert`` read ``backbone.*`` only anyway), while ``.to(device)`` still
moves it. It runs without grad under the step's autocast (bf16 when the run is; unlike pixel and HOG targets) and
returns float32. :meth:`TeacherTarget.extra_metrics` gives the time of its latest forward as ``teacher_ms`` (CPU: wall
clock; CUDA: events read once complete, without a sync) for the step metrics.

Identity: ``sha256`` is a content hash of the weights read (sorted keys, each key's name, dtype, shape and bytes), so
it does not depend on the container (pickle or safetensors, a run directory or its checkpoint). The pretraining task
stores every teacher's source and hash in the checkpoint and refuses a resume whose teacher hashes differently
(:meth:`TeacherTarget.check_record`, through the method's generic ``records`` / ``check_records``). A run directory
resolves to its newest checkpoint at start-up, so a teacher run that is still training changes the hash between
attempts: point ``path`` at a fixed checkpoint file. On the meta device (building a method only to inspect it) a timm
teacher is built without reading its file (a vmim source is read for its architecture only), and the hash is empty.

Reading is safe: both sources read through :func:`vmim.safe_load.load` (``weights_only=True``, or safetensors), also
when the config is validated; a file that would run code raises :class:`UnsafeTeacherFile` (an
:class:`~vmim.errors.UnsafeFileError` and a :class:`TeacherError`, exit 2) naming ``targets.<name>.path``, the file
and what it holds; an unreadable one a :class:`TeacherError` naming the same.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .. import safe_load
from ..config import ConfigError
from ..convert.common import check_and_load
from ..errors import InputError, UnsafeFileError
from ..models.flops import NoCount, fake_macs, module_device, module_macs
from ..models.frozen import Frozen
from ..models.grid import Grid
from ..models.loading import read_weights
from ..models.registry import create_backbone
from .base import Target

FEATURE_NORM_EPS = 1e-6


class TeacherError(ConfigError):
    """A teacher that cannot be built or resumed, naming its config key (``path``, ``blocks``, ...; the method prefixes
    ``targets.<name>``)."""

    def __init__(self, key: str, message: str):
        super().__init__(key, message)
        self.message = message

    def under(self, prefix: str) -> "TeacherError":
        """The same error with its key under ``prefix`` (``targets.<name>``)."""
        return TeacherError(f"{prefix}.{self.key}", self.message)


class UnsafeTeacherFile(TeacherError, UnsafeFileError):
    """The teacher's weights file holds more than tensors and plain data: refused unread (:mod:`vmim.safe_load`),
    naming ``targets.<name>.path``, the file and what it holds (exit 2)."""

    def under(self, prefix: str) -> "UnsafeTeacherFile":
        return UnsafeTeacherFile(f"{prefix}.{self.key}", self.message)


def state_dict_sha256(state_dict: dict[str, Tensor]) -> str:
    """Hex sha256 over the sorted keys, each key's name, dtype, shape and raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def resample_grid(x: Tensor, size: Grid) -> Tensor:
    """Feature map ``(B, D, t, h, w)`` -> ``(B, D, T', H', W')``: area mean along the axes the input is finer in, else
    (bi)linear with ``align_corners=False`` (space first, then time; rules in the module docstring)."""
    b, d, t, h, w = x.shape
    tt, hh, ww = size
    if (h, w) != (hh, ww):
        y = x.transpose(1, 2).reshape(b * t, d, h, w)
        if h >= hh and w >= ww:
            y = F.adaptive_avg_pool2d(y, (hh, ww))
        else:
            y = F.interpolate(y, size=(hh, ww), mode="bilinear", align_corners=False)
        x = y.reshape(b, t, d, hh, ww).transpose(1, 2)
    if t != tt:
        y = x.permute(0, 3, 4, 1, 2).reshape(b * hh * ww, d, t)
        y = F.adaptive_avg_pool1d(y, tt) if t >= tt else F.interpolate(y, size=tt, mode="linear", align_corners=False)
        x = y.reshape(b, hh, ww, d, tt).permute(0, 3, 4, 1, 2)
    return x


def _on_meta() -> bool:
    return torch.get_default_device().type == "meta"


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a torch or safetensors file (read by :func:`vmim.safe_load.load`, never running code); one
    ``state_dict`` / ``model`` / ``module`` wrapper level unwrapped."""
    try:
        obj = safe_load.load(path)
    except UnsafeFileError as err:
        raise UnsafeTeacherFile("path", str(err)) from None
    except InputError as err:
        raise TeacherError("path", str(err)) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "module"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TeacherError("path", f"{path} holds no state dict of tensors (a torch or safetensors file of a timm "
                                   "model's weights is expected)")
    return dict(obj)


class TimmSource:
    """A timm image model from a local weights file (or, on the meta device, without one)."""

    image = True
    tubelet = 1

    def __init__(self, name: str, path: str, input_size: int):
        import timm

        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0}
        if input_size:
            kwargs["img_size"] = input_size
        try:
            try:
                net = timm.create_model(name, dynamic_img_size=True, **kwargs)
            except TypeError:  # not a ViT-style model: no dynamic position table
                net = timm.create_model(name, **kwargs)
        except (RuntimeError, TypeError) as err:
            raise TeacherError("timm_model", f"cannot build timm model {name!r}: {err}") from None
        if not hasattr(net, "forward_intermediates") or not isinstance(getattr(net, "feature_info", None), list):
            raise TeacherError("timm_model", f"timm model {name!r} has no forward_intermediates / feature_info: use "
                                             "a ViT-style model (vit_*, deit_*, eva_*)")
        self.net = net
        self.dims = [int(f["num_chs"]) for f in net.feature_info]
        cfg = getattr(net, "pretrained_cfg", {}) or {}
        self.mean = list(cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = list(cfg.get("std", (0.229, 0.224, 0.225)))
        self.sha256 = ""
        self.origin = f"timm {name} (not loaded: meta device)"
        if _on_meta():
            return
        file = Path(path)
        if not file.is_file():
            raise TeacherError("path", f"no such weights file for timm model {name!r}: {file}")
        sd = _read_state_dict(file)
        self.sha256 = state_dict_sha256(sd)
        dropped = sorted(k for k in sd if k.startswith("head."))
        try:
            check_and_load(net, {k: v for k, v in sd.items() if k not in dropped}, f"the weights {file}")
        except ValueError as err:
            hint = "" if "pos_embed" not in str(err) else " (pos_embed: set input_size to the weights' image size)"
            raise TeacherError("path", f"{err}{hint}") from None
        self.origin = f"timm {name} from {file}" + (f" (dropped {', '.join(dropped)})" if dropped else "")

    def features(self, x: Tensor, indices: list[int], final_norm: bool) -> list[Tensor]:
        """Images ``(B, C, H, W)`` -> per index ``(B, D, 1, h, w)``."""
        maps = self.net.forward_intermediates(x, indices=indices, norm=final_norm, output_fmt="NCHW",
                                              intermediates_only=True)
        return [m.unsqueeze(2) for m in maps]


class VmimSource:
    """A vmim backbone from a run directory, one of our checkpoints or a converted file."""

    def __init__(self, path: str):
        try:
            weights = read_weights(path)
        except UnsafeFileError as err:
            raise UnsafeTeacherFile("path", str(err)) from None
        except (FileNotFoundError, ValueError) as err:
            raise TeacherError("path", str(err)) from None
        net = create_backbone(weights.config, weights.video_grid)
        self.sha256 = ""
        self.origin = f"{weights.origin} (not loaded: meta device)"
        if not _on_meta():
            try:
                check_and_load(net, weights.state_dict, f"the teacher weights ({weights.origin})")
            except ValueError as err:
                raise TeacherError("path", str(err)) from None
            self.sha256 = state_dict_sha256(weights.state_dict)
            self.origin = weights.origin
        self.net = net
        self.tubelet = int(net.patch_size[0])
        self.image = self.tubelet == 1
        self.dims = list(net.dims)
        self.mean, self.std = list(weights.data["mean"]), list(weights.data["std"])

    def features(self, x: Tensor, indices: list[int], final_norm: bool) -> list[Tensor]:
        """Clips ``(B, C, T, H, W)`` -> per index ``(B, D, t, h, w)``."""
        encoded, outputs = self.net.forward_intermediates(x, None, indices, norm=final_norm)
        t, h, w = encoded.grid
        maps = []
        for i, out in zip(indices, outputs):
            if out.shape[1] != t * h * w:
                raise ValueError(f"teacher block {i} has {out.shape[1]} tokens, not the {t}x{h}x{w} of its output "
                                 "grid: choose blocks of the last stage")
            maps.append(rearrange(out, "b (t h w) d -> b d t h w", t=t, h=h, w=w))
        return maps


class _Timer:
    """Milliseconds of the latest finished forward: wall clock on the CPU; on CUDA a pair of events, read once the GPU
    has passed them (no synchronisation: usually the previous call's)."""

    def __init__(self):
        self.pending: list[tuple[Any, Any]] = []
        self.latest: float | None = None

    def start(self, device: torch.device) -> Any:
        if device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, token: Any) -> None:
        if isinstance(token, float):
            self.latest = (time.perf_counter() - token) * 1e3
            return
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        self.pending = [*self.pending[-7:], (token, end)]

    def take(self) -> float | None:
        waiting = []
        for start, end in self.pending:
            if end.query():
                self.latest = start.elapsed_time(end)
            else:
                waiting.append((start, end))
        self.pending = waiting
        latest, self.latest = self.latest, None
        return latest


class TeacherTarget(Target):
    """Features of a frozen teacher at chosen blocks, on the student's token grid (rules in the module docstring).

    Args:
        patch_size: the student's tubelet ``(t, p, p)``.
        in_chans: channels C of the clips.
        path: weights (a vmim run dir / checkpoint / converted file; with ``timm_model``, a torch or safetensors file).
        timm_model: timm architecture name; empty: ``path`` is a vmim source.
        blocks: teacher block indices (negative from the end), features concatenated in this order.
        final_norm: apply the teacher's final norm to the chosen blocks.
        norm_features: LayerNorm without affine (eps 1e-6) on each block's features.
        input_size: teacher frame height (0: the student's frames unchanged).
        mean, std: the teacher's input statistics of [0, 1] pixels; None: the source's.

    Attributes:
        dim: ``D`` = the sum of the chosen blocks' widths.
        image: whether the teacher is an image model (first frame per student tubelet).
        origin, sha256: where the weights came from and their content hash ("" on the meta device).
        teacher: the :class:`~vmim.models.frozen.Frozen` network.
    """

    def __init__(self, patch_size: tuple[int, int, int], in_chans: int = 3, path: str = "", timm_model: str = "",
                 blocks: Sequence[int] = (-1,), final_norm: bool = False, norm_features: bool = False,
                 input_size: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        super().__init__(patch_size, in_chans)
        self.dim, self.image = 0, True  # until the source is read (repr of a half-built target)
        self.path, self.timm_model, self.blocks = path, timm_model, list(blocks)
        self.final_norm, self.norm_features, self.input_size = final_norm, norm_features, input_size
        self.mean, self.std = (None if mean is None else list(mean)), (None if std is None else list(std))
        if not path:
            raise TeacherError("path", "a teacher needs weights: a vmim run directory, checkpoint or converted file, "
                                       "or a local weights file together with timm_model")
        if input_size < 0:
            raise TeacherError("input_size", f"{input_size} must be >= 0 (0: the student's size)")
        source = TimmSource(timm_model, path, input_size) if timm_model else VmimSource(path)
        depth = len(source.dims)
        if not self.blocks or any(not -depth <= b < depth for b in self.blocks) or \
                len({b % depth for b in self.blocks}) != len(self.blocks):
            raise TeacherError("blocks", f"{self.blocks} must be distinct blocks of the {depth}-block teacher "
                                         f"(-{depth} .. {depth - 1})")
        self._resolved = [b % depth for b in self.blocks]
        self._take = sorted(self._resolved)  # forward_intermediates returns blocks in block order
        self.dim = sum(source.dims[b] for b in self._resolved)
        self.image, self.tubelet = source.image, source.tubelet
        self.kind = "timm" if timm_model else "vmim"
        self.origin, self.sha256 = source.origin, source.sha256
        pixel_mean = source.mean if mean is None else list(mean)
        pixel_std = source.std if std is None else list(std)
        if len(pixel_mean) != in_chans or len(pixel_std) != in_chans or min(pixel_std) <= 0:
            raise TeacherError("mean", f"the teacher's mean {pixel_mean} / std {pixel_std} need {in_chans} values "
                                       "(positive std), one per channel of the clips")
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32), persistent=False)
        self._source = source
        self.teacher = Frozen(source.net)
        self._timer = _Timer()

    @classmethod
    def from_config(cls, cfg: Any, patch_size: tuple[int, int, int], in_chans: int) -> "TeacherTarget":
        return cls(patch_size, in_chans, path=cfg.path, timm_model=cfg.timm_model, blocks=list(cfg.blocks),
                   final_norm=cfg.final_norm, norm_features=cfg.norm_features, input_size=cfg.input_size,
                   mean=cfg.mean, std=cfg.std)

    def extra_repr(self) -> str:
        return (f"patch_size={self.patch_size}, {'image' if self.image else 'video'} teacher, blocks={self.blocks}, "
                f"dim={self.dim}, final_norm={self.final_norm}, norm_features={self.norm_features}, "
                f"input_size={self.input_size}")

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------

    def forward(self, pixels: Tensor) -> Tensor:
        """Per-token teacher features of a clip.

        Args:
            pixels: ``(B, C, T, H, W)`` clean clip in [0, 1].

        Returns:
            float32 ``(B, N, D)`` on the student's grid, N = T'*H'*W' in (t, h, w) order, without grad. Runs under
            the caller's autocast.
        """
        self.grid(pixels)
        token = self._timer.start(pixels.device)
        with torch.no_grad():
            out = self._compute(pixels.float())
        self._timer.stop(token)
        return out

    def _compute(self, pixels: Tensor) -> Tensor:
        b = pixels.shape[0]
        grid = self.grid(pixels)
        maps = self._source_features(self._teacher_input(pixels))
        outs = []
        for m in maps:
            m = m.float()
            if self.image:  # (B*T', D, 1, h, w): one image per student tubelet
                m = rearrange(m, "(b t) d 1 h w -> b d t h w", b=b)
            m = rearrange(resample_grid(m, grid), "b d t h w -> b (t h w) d")
            if self.norm_features:
                m = F.layer_norm(m, m.shape[-1:], eps=FEATURE_NORM_EPS)
            outs.append(m)
        return torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]

    def _source_features(self, x: Tensor) -> list[Tensor]:
        """Teacher input -> per configured block (in the config's order) a map ``(B', D_i, t, h, w)``."""
        net = self.teacher.net
        if net.training:
            net.eval()
        maps = dict(zip(self._take, self._source.features(x, self._take, self.final_norm)))
        return [maps[i] for i in self._resolved]

    def _teacher_input(self, pixels: Tensor) -> Tensor:
        """[0, 1] clip ``(B, C, T, H, W)`` -> the teacher's normalized input: images ``(B*T', C, H, W)`` (timm),
        ``(B*T', C, 1, H, W)`` (a vmim image teacher) or the clip ``(B, C, T_, H, W)`` (a video teacher)."""
        if self.image:
            frames = rearrange(pixels[:, :, :: self.patch_size[0]], "b c t h w -> (b t) c h w")
            frames = self._normalize(self._resize(frames))
            return frames if self.kind == "timm" else frames.unsqueeze(2)
        if pixels.shape[2] % self.tubelet:
            pixels = pixels[:, :, :1]
        t = pixels.shape[2]
        frames = self._normalize(self._resize(rearrange(pixels, "b c t h w -> (b t) c h w")))
        return rearrange(frames, "(b t) c h w -> b c t h w", t=t)

    def _resize(self, frames: Tensor) -> Tensor:
        h, w = frames.shape[-2:]
        if not self.input_size or h == self.input_size:
            return frames
        size = (self.input_size, max(1, round(w * self.input_size / h)))
        return F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _normalize(self, frames: Tensor) -> Tensor:
        return (frames - self.pixel_mean.view(1, -1, 1, 1)) / self.pixel_std.view(1, -1, 1, 1)

    # ------------------------------------------------------------------------------------------------
    # Reporting and identity
    # ------------------------------------------------------------------------------------------------

    def take_ms(self) -> float | None:
        """Milliseconds of the latest finished forward not yet taken (None: none finished since the last call)."""
        return self._timer.take()

    def summary(self) -> str:
        """One log line: source, kind, blocks, memory, hash."""
        sha = self.sha256[:16] if self.sha256 else "-"
        return (f"{self.origin} | {'image (first frame per tubelet)' if self.image else 'video'} teacher | blocks "
                f"{self.blocks} -> dim {self.dim} | {self.teacher.num_params() / 1e6:.2f}M parameters, "
                f"{self.teacher.nbytes() / 2**20:.1f} MiB | sha256 {sha}")

    def record(self) -> dict[str, str]:
        """What a checkpoint keeps of this teacher: its source and content hash."""
        return {"path": self.path, "timm_model": self.timm_model, "origin": self.origin, "sha256": self.sha256}

    def check_record(self, saved: dict[str, str], key: str) -> None:
        """Refuse to continue a run whose teacher weights changed.

        Args:
            saved: this teacher's :meth:`record` from the checkpoint (empty: the teacher is new, and passes).
            key: the target's config key, ``targets.<name>``.

        Raises:
            TeacherError: naming ``<key>.path`` and both hashes.
        """
        old = saved or {}
        if old.get("sha256") and self.sha256 and old["sha256"] != self.sha256:
            raise TeacherError(f"{key}.path", (
                f"the teacher weights now at {self.path!r} ({self.origin}) have sha256 {self.sha256}, but "
                f"this run was trained with teacher weights of sha256 {old['sha256']} ({old.get('origin', '?')}); "
                "resuming would change the targets mid-run: restore those weights, or start a new run (another "
                "output_dir)"))

    def describe(self, key: str) -> str:
        """The start-up log line: ``teacher <key>: <summary>``."""
        return f"teacher {key}: {self.summary()}"

    def extra_metrics(self) -> dict[str, float]:
        """``{"teacher_ms": ms}`` of the latest finished forward not yet reported (empty: none finished since)."""
        ms = self.take_ms()
        return {} if ms is None else {"teacher_ms": ms}

    def macs(self, shape: Sequence[int]) -> int:
        """Multiply-adds of the teacher on its input for a clean clip of ``shape`` (image teachers: the first frame
        of each student tubelet, resized to ``input_size``); a network without a count of its own (timm) is counted
        under fake tensors (:mod:`vmim.models.flops`). Resampling and the feature norm are not counted."""
        b, c, frames, h, w = shape
        if self.input_size and h != self.input_size:
            h, w = self.input_size, max(1, round(w * self.input_size / h))
        if self.image:
            n = b * math.ceil(frames / self.patch_size[0])
            x = (n, c, h, w) if self.kind == "timm" else (n, c, 1, h, w)
        else:
            x = (b, c, 1 if frames % self.tubelet else frames, h, w)
        net = self.teacher.net
        try:
            return module_macs(net, x)
        except NoCount:
            return fake_macs(net.forward_intermediates, x, key=id(net), device=module_device(net),
                             indices=sorted(self.blocks), norm=self.final_norm, output_fmt="NCHW",
                             intermediates_only=True)


__all__ = ["TeacherError", "TeacherTarget", "UnsafeTeacherFile", "resample_grid", "state_dict_sha256"]
