"""The seams' contracts, checked for every registered name (timm ``tests/test_models.py`` style).

Each test is parametrised over a package registry, so a newly registered backbone, masking, target, head, loss or
token set is checked without editing this file; where a contract needs a per-kind fact (a head that reads only
encoded tokens, a loss's known answer), a registry test fails until the new kind is described here.

* Backbones (``vmim.models.BACKBONES``, :mod:`vmim.models.base`): grid, visible-only and dense forwards, images,
  ``forward_intermediates``, ``no_weight_decay``, ``group_matcher``, every position embedding. Backbones under
  :data:`REAL_FORWARD_PARAMS` parameters run real forwards on tiny inputs; the others are checked on the meta device
  (no memory, no init), where the visible-only gather (a data-dependent shape) cannot run.
* Maskings (``vmim.masking``): bool, flat (a windowed one: over its window tokens, with in-grid window indices), the
  exact count, deterministic per seed, varying across seeds.
* Targets (``vmim.targets``): no trainable state, ``(B, N, D)`` float32 without grad, also under autocast.
* Heads (``vmim.models.heads``): ``(B, M, out_dim)`` for visible-only and dense encoders, batch order, gradients.
* Losses and token sets (``vmim.meta_arch``): shapes, zeros, known answers by hand.
* Every shipped config builds its method on the meta device, as configured.
"""

from __future__ import annotations

import math

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.models import group_parameters

from tests.conftest import clip_batch, make_mask, rng
from vmim import config
from vmim.config import load_config, video_grid
from vmim.masking import MASKINGS, Masks, WindowedMask, build_mask_generator, build_mask_generators, draw_masks
from vmim.meta_arch import LOSSES, TOKEN_SETS, build_loss, build_method
from vmim.meta_arch.losses import weighted_mean
from vmim.models import BACKBONES, HEADS, DecoderHead, EncoderOutput, InputNormalizer, LinearHead, build_head
from vmim.models import create_backbone, token_grid
from vmim.targets import TARGETS, build_target

ROOT = Path(__file__).resolve().parents[1]


def with_fields(cfg, **changes):
    """``cfg`` with those of ``changes`` that are fields of its dataclass replaced."""
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in names})


def own_fields(cls: type, base: type) -> list[str]:
    """Fields a kind's dataclass adds to its family's base dataclass."""
    common = {f.name for f in dataclasses.fields(base)}
    return [f.name for f in dataclasses.fields(cls) if f.name not in common]


# ----------------------------------------------------------------------------------------------------
# Backbones
# ----------------------------------------------------------------------------------------------------

REAL_FORWARD_PARAMS = 10e6
"""Backbones with fewer parameters (at the config's defaults) run real forwards; bigger ones are checked on meta."""
GRID = (2, 2, 3)
"""Token grid of the test clips: 2 tubelets of 2 x 3 patches (H' != W' catches swapped axes)."""
N = GRID[0] * GRID[1] * GRID[2]
N_MASKED = 9
B = 2


def backbone_config(name: str, **changes):
    """The default config entry of backbone ``name`` (its config dataclass), with ``changes``."""
    cls = config.BACKBONES[name]
    return with_fields(cls(**{config.FAMILIES["backbones"].kind_field: name}), **changes)


@functools.lru_cache(maxsize=None)
def default_param_count(name: str) -> int:
    with torch.device("meta"):
        model = create_backbone(backbone_config(name))
    return sum(p.numel() for p in model.parameters())


BACKBONE_NAMES = list(BACKBONES)
REAL = [n for n in BACKBONE_NAMES if default_param_count(n) < REAL_FORWARD_PARAMS]
META = [n for n in BACKBONE_NAMES if n not in REAL]


def config_keys(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(config.BACKBONES[name])}


VISIBLE = [n for n in BACKBONE_NAMES if "dense" in config_keys(n)]
"""Backbones that can encode the visible tokens only (their config has a ``dense`` switch); the others are dense."""
POSITIONAL = [n for n in BACKBONE_NAMES if "pos_embed" in config_keys(n)]
"""Backbones whose config picks one of our position embeddings (``pos_embed``)."""


def dense_options(name: str) -> tuple[bool, ...]:
    return (False, True) if name in VISIBLE else (True,)


def pos_options(name: str) -> list:
    return POS_EMBEDS if name in POSITIONAL else [None]


@functools.lru_cache(maxsize=None)
def backbone(name: str, dense: bool = False, pos_embed: str | None = "sincos_3d"):
    """Backbone ``name`` in eval mode: on the CPU with 8 px patches and 2-frame tubelets when it is small, else on the
    meta device at its config's patch sizes. ``video_grid`` (for a learned table) is :data:`GRID`. Switches its config
    lacks (``dense``, ``pos_embed``, patch sizes of a multiscale backbone) are left at the backbone's own."""
    changes = {"dense": dense, "pos_embed": pos_embed}
    real = name in REAL
    if real:
        changes.update(patch_size=8, tubelet_size=2)
    torch.manual_seed(0)
    with torch.device("cpu" if real else "meta"):
        model = create_backbone(backbone_config(name, **changes), video_grid=GRID)
    return model.eval()


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def inputs(model: torch.nn.Module, image: bool = False, seed: int = 0) -> torch.Tensor:
    """A normalized clip (or image) of the :data:`GRID` shape, on the model's device."""
    t, p, _ = model.patch_size
    shape = (B, 3, 1 if image else GRID[0] * t, GRID[1] * p, GRID[2] * p)  # 3 channels: the configs' default
    if device_of(model).type == "meta":
        return torch.empty(shape, device="meta")
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def pixel_mask(mask: torch.Tensor, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Token mask (B, N) -> pixel mask (B, 1, T, H, W) of the pixels each token reads."""
    t, p, _ = model.patch_size
    grid = model.grid(x.shape)
    m = mask.view(mask.shape[0], *grid)
    m = m.repeat_interleave(t if x.shape[2] != 1 else 1, 1).repeat_interleave(p, 2).repeat_interleave(p, 3)
    return m.unsqueeze(1)


def test_small_backbones_run_real_forwards():
    assert {"vit_test", "vit_tiny"} <= set(REAL), f"real forwards run only on {REAL}"
    assert "vit_base" in META


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_declares_its_contract(name):
    model = backbone(name)
    for attr in ("grid", "forward_intermediates", "no_weight_decay", "group_matcher", "decoder_pos_embed",
                 "stem_overlap"):
        assert hasattr(model, attr), f"{name} lacks {attr}"
    assert model.dense is (name not in VISIBLE) and backbone(name, dense=True).dense is True
    assert model.decoder_pos_embed in config.POS_EMBEDS
    if name in POSITIONAL:
        assert model.pos_embed.kind == model.decoder_pos_embed == "sincos_3d"
    assert len(model.patch_size) == 3 and model.embed_dim > 0 and model.depth > 0
    cfg = backbone_config(name)  # what masks, targets and data checks read from the config is the model's
    if name not in REAL or "patch_size" not in config_keys(name):  # (small ViTs are built with 8 px patches here)
        assert (cfg.tubelet_size, cfg.patch_size, cfg.patch_size) == tuple(model.patch_size)


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_grid_agrees_with_token_grid(name):
    model = backbone(name)
    t, p, _ = model.patch_size
    for shape, want in [((B, 3, 2 * t, 2 * p, 3 * p), (2, 2, 3)), ((B, 3, 1, 2 * p, 3 * p), (1, 2, 3)),
                        ((B, 3, 8 * t, 14 * p, 14 * p), (8, 14, 14))]:
        assert tuple(model.grid(shape)) == token_grid(shape, model.patch_size) == want, shape
    with pytest.raises(ValueError):
        model.grid((B, 3, 2 * t, 2 * p + 1, 3 * p))
    if t > 1:
        with pytest.raises(ValueError):
            model.grid((B, 3, t + 1, 2 * p, 3 * p))


FORWARD_CASES = [
    pytest.param(name, dense, masked, image, id=f"{name}-{'dense' if dense else 'visible'}-"
                 f"{'mask' if masked else 'nomask'}-{'image' if image else 'clip'}")
    for name in BACKBONE_NAMES for dense in dense_options(name) for masked in (False, True) for image in (False, True)
    # on meta (a forward of a big ViT costs ~0.3 s even there): one visible-only and one dense case; meta tensors
    # cannot gather a data-dependent number of tokens, so the visible-only one is unmasked
    if name in REAL or (dense, masked, image) in ((False, False, False), (True, True, True))
]


@pytest.mark.parametrize("name,dense,masked,image", FORWARD_CASES)
def test_backbone_forward(name, dense, masked, image):
    model = backbone(name, dense=dense)
    x = inputs(model, image=image)
    grid = (1, *GRID[1:]) if image else GRID
    n = grid[0] * grid[1] * grid[2]
    mask = make_mask(B, n, n * 3 // 4, seed=1).to(x.device) if masked else None
    with torch.no_grad():
        out = model(x, mask)
    assert isinstance(out, EncoderOutput)
    assert tuple(out.grid) == tuple(model.grid(x.shape)) == grid
    visible_only = masked and not model.dense
    assert out.tokens.shape == (B, n - n * 3 // 4 if visible_only else n, model.embed_dim)
    assert out.tokens.dtype == torch.float32
    if visible_only:
        assert out.present is not None and out.present.dtype == torch.bool
        assert torch.equal(out.present, ~mask)
    else:
        assert out.present is None
    if x.device.type == "meta":
        return
    assert torch.isfinite(out.tokens).all()
    if masked and model.stem_overlap == 0:  # what a masked token's pixels hold never reaches the output (an
        # overlapping stem reads into masked cells' borders: each such backbone tests its interiors, test_mvit.py)
        noisy = torch.where(pixel_mask(mask, model, x), torch.randn_like(x) * 5, x)
        with torch.no_grad():
            torch.testing.assert_close(model(noisy, mask).tokens, out.tokens)
    else:
        assert (out.tokens - out.tokens.mean(1, keepdim=True)).abs().amax() > 1e-3  # tokens are not all the same


INTERMEDIATE_CASES = [pytest.param(name, indices, id=f"{name}-{indices}") for name in BACKBONE_NAMES
                      for indices in ([None, 2, [0, -1]] if name in REAL else [[0, -1]])]


@pytest.mark.parametrize("name,indices", INTERMEDIATE_CASES)
def test_backbone_forward_intermediates(name, indices):
    model = backbone(name)
    x = inputs(model)
    real = x.device.type != "meta"
    mask = make_mask(B, N, N_MASKED, seed=3) if real else None
    depth = model.depth
    want = list(range(depth)) if indices is None else (
        list(range(depth - indices, depth)) if isinstance(indices, int) else sorted(i % depth for i in indices))
    with torch.no_grad():
        final, outputs = model.forward_intermediates(x, mask, indices=indices, norm=True)
    assert len(outputs) == len(want)
    n_present = N - N_MASKED if mask is not None and not model.dense else N
    widths = getattr(model, "dims", [model.embed_dim] * depth)  # a multiscale backbone widens stage by stage
    for out, block in zip(outputs, want):
        assert out.ndim == 3 and out.shape[0] == B and out.shape[-1] == widths[block]
        if not hasattr(model, "dims"):
            assert out.shape[1] == n_present
    assert final.tokens.shape == (B, n_present, model.embed_dim)
    if not real:
        return
    with torch.no_grad():
        _, raw = model.forward_intermediates(x, mask, indices=indices, norm=False)
        reference = model(x, mask)
        _, every = model.forward_intermediates(x, mask, indices=None, norm=True)
    torch.testing.assert_close(final.tokens, reference.tokens)
    assert (final.present is None) == (reference.present is None)
    assert final.present is None or torch.equal(final.present, reference.present)
    for out, block in zip(outputs, want):  # the chosen blocks, in block order
        torch.testing.assert_close(out, every[block])
    if want[-1] == depth - 1:  # the last block, normed, is the final output
        torch.testing.assert_close(outputs[-1], final.tokens)
    assert not torch.allclose(raw[-1], outputs[-1])  # norm=False returns the blocks' raw outputs


@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_backbone_forward_returns_requested_blocks(name):
    """``forward(x, mask, blocks)`` keeps the raw outputs of the asked blocks under the asked keys (heads reading an
    inner block), equal to ``forward_intermediates``; ``dims`` gives every block's width."""
    model = backbone(name)
    assert len(model.dims) == model.depth and model.dims[-1] == model.embed_dim
    x = inputs(model)
    real = x.device.type != "meta"
    mask = make_mask(B, N, N_MASKED, seed=3) if real else None
    with torch.no_grad():
        out = model(x, mask, blocks=[0, -1])
        _, raw = model.forward_intermediates(x, mask, indices=[0, -1], norm=False)
    assert sorted(out.blocks) == [-1, 0]
    assert [out.blocks[0].shape[-1], out.blocks[-1].shape[-1]] == [model.dims[0], model.dims[-1]]
    assert out.blocks[-1].shape[:2] == out.tokens.shape[:2]
    if real:
        torch.testing.assert_close(out.blocks[0], raw[0])
        torch.testing.assert_close(out.blocks[-1], raw[1])
        torch.testing.assert_close(out.tokens, model(x, mask).tokens)
        assert out.select(-1).tokens is out.blocks[-1] and out.select(None) is out
    with pytest.raises(KeyError, match="not requested"):
        out.select(1)


POS_EMBEDS = list(config.POS_EMBEDS)
FEATURE_CASES = [(name, dense, pos) for name in BACKBONE_NAMES for dense in dense_options(name)
                 for pos in pos_options(name)]


@pytest.mark.parametrize("name,dense,pos_embed", FEATURE_CASES)
def test_backbone_no_weight_decay_names_exist(name, dense, pos_embed):
    model = backbone(name, dense=dense, pos_embed=pos_embed)
    params = dict(model.named_parameters())
    names = set(model.no_weight_decay())
    if pos_embed is None:  # a backbone with its own position scheme: every name exists, the mask token included
        assert names <= set(params) and "mask_token" in names & set(params)
        return
    off = set()  # features switched off: their parameters do not exist
    if not dense:
        off.add("mask_token")
    if pos_embed != "learned":
        off.add("pos_embed.table")
    assert names - set(params) <= off, f"no_weight_decay() names no parameter: {sorted(names - set(params) - off)}"
    on = {"mask_token"} if dense else set()
    if pos_embed == "learned":
        on.add("pos_embed.table")
    assert on <= names & set(params), f"{sorted(on - names)} exist but are decayed"
    assert not off & set(params), f"{sorted(off & set(params))} exist although their feature is off"


def matcher_regexes(matcher: dict) -> list[re.Pattern]:
    out = []
    for spec in matcher.values():
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        out += [re.compile(s[0]) for s in specs]
    return out


@pytest.mark.parametrize("name,dense,pos_embed", [c for c in FEATURE_CASES if c[2] == "learned"] +
                         [c for c in FEATURE_CASES if c[1] is False and c[2] == "sincos_3d"] +
                         [c for c in FEATURE_CASES if c[2] is None])
def test_backbone_group_matcher_covers_every_parameter_in_block_order(name, dense, pos_embed):
    model = backbone(name, dense=dense, pos_embed=pos_embed)
    matcher = model.group_matcher()
    names = [n for n, _ in model.named_parameters()]
    regexes = matcher_regexes(matcher)
    unmatched = [n for n in names if not any(r.match(n) for r in regexes)]
    assert not unmatched, f"group_matcher() leaves {unmatched} in timm's catch-all last group"
    group_of = group_parameters(model, matcher, reverse=True)
    assert set(group_of) == set(names)
    block_groups: dict[int, set[int]] = {}
    for n in names:
        hit = re.match(r"^blocks\.(\d+)\.", n)
        if hit:
            block_groups.setdefault(int(hit.group(1)), set()).add(group_of[n])
    assert sorted(block_groups) == list(range(model.depth))
    assert all(len(g) == 1 for g in block_groups.values()), "a block's parameters fall into several groups"
    ids = [next(iter(block_groups[i])) for i in range(model.depth)]
    assert ids == list(range(ids[0], ids[0] + model.depth)), f"block groups not consecutive and increasing: {ids}"
    first_block = names.index(next(n for n in names if n.startswith("blocks.")))
    last_block = max(i for i, n in enumerate(names) if n.startswith("blocks."))
    for i, n in enumerate(names):
        if i < first_block:
            assert group_of[n] < ids[0], f"stem parameter {n} is not before block 0"
        elif i > last_block:
            assert group_of[n] >= ids[-1], f"head-side parameter {n} comes before the last block"


@pytest.mark.parametrize("name,pos_embed", [(n, p) for n in POSITIONAL for p in POS_EMBEDS])
def test_backbone_position_embedding_kinds(name, pos_embed):
    model = backbone(name, pos_embed=pos_embed)
    assert model.pos_embed.kind == pos_embed
    device = device_of(model)
    table = model.pos_embed(GRID, device)
    assert table.shape == (N, model.embed_dim)
    image_table = model.pos_embed((1, *GRID[1:]), device)
    assert image_table.shape == (GRID[1] * GRID[2], model.embed_dim)
    own = dict(model.pos_embed.named_parameters())
    if pos_embed == "learned":
        assert set(own) == {"table"} and own["table"].shape == (N, model.embed_dim)
        resampled = model.pos_embed((GRID[0], GRID[1] + 1, GRID[2]), device)  # another resolution: resampled
        assert resampled.shape == (GRID[0] * (GRID[1] + 1) * GRID[2], model.embed_dim)
        with pytest.raises(ValueError):  # another clip length is not
            model.pos_embed((GRID[0] + 1, GRID[1], GRID[2]), device)
    else:
        assert not own, "a fixed table has no parameters"
        bigger = model.pos_embed((4, 5, 7), device)  # any grid, no interpolation
        assert bigger.shape == (4 * 5 * 7, model.embed_dim)
    if device.type == "meta":  # forwards are checked on the small backbones
        return
    for image in (False, True):
        x = inputs(model, image=image)
        mask = make_mask(B, N if not image else GRID[1] * GRID[2], 3, seed=5)
        with torch.no_grad():
            assert model(x, None).tokens.shape == (B, mask.shape[1], model.embed_dim)
            assert model(x, mask).tokens.shape == (B, mask.shape[1] - 3, model.embed_dim)
    torch.testing.assert_close(image_table, table[: GRID[1] * GRID[2]])  # an image is the t = 0 slice
    assert torch.unique(table, dim=0).shape[0] == N, "two positions share an embedding"


# ----------------------------------------------------------------------------------------------------
# Maskings
# ----------------------------------------------------------------------------------------------------

MASK_GRIDS = [(4, 8, 8), (1, 8, 8), (8, 14, 14)]  # even sides (running cell); images use ratio_image
MASK_SEEDS = range(16)


def mask_generator(kind: str):
    return build_mask_generator(config.MASKINGS[kind]())


@pytest.mark.parametrize("grid", MASK_GRIDS, ids=str)
@pytest.mark.parametrize("kind", list(MASKINGS))
def test_masking_contract(kind, grid):
    """A mask over the grid's N tokens (a windowed kind: over its K x w window tokens, with each window's grid
    indices), the registered count masked, a function of the seed, not the same for every seed."""
    gen = mask_generator(kind)
    windowed = isinstance(gen(grid, rng(0)), WindowedMask)
    n = gen(grid, rng(0)).mask.size if windowed else grid[0] * grid[1] * grid[2]
    count = gen.num_masked(grid)
    assert 0 < count < n, "at least one token masked and one visible"
    ratio = config.MASKINGS[kind]().ratio_image if grid[0] == 1 else config.MASKINGS[kind]().ratio_video
    assert abs(count / n - ratio) <= 1 / (grid[1] * grid[2]), f"{count} of {n} masked for ratio {ratio}"
    patterns = set()
    for seed in MASK_SEEDS:
        drawn, again = gen(grid, rng(seed)), gen(grid, rng(seed))
        mask = drawn.mask if windowed else drawn
        assert isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (n,)
        assert int(mask.sum()) == count
        assert np.array_equal(again.mask if windowed else again, mask), "not a function of the generator's seed"
        pattern = mask.tobytes()
        if windowed:
            assert drawn.windows.dtype == np.int64 and drawn.windows[0].size * len(drawn.windows) == n
            assert 0 <= drawn.windows.min() and drawn.windows.max() < math.prod(grid)
            assert np.array_equal(again.windows, drawn.windows)
            pattern += drawn.windows.tobytes()
        patterns.add(pattern)
    assert len(patterns) > 1, f"the same mask for all of {len(MASK_SEEDS)} seeds"


# ----------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------

TARGET_PATCH = (2, 8, 8)


TARGET_TRAITS = {
    # runs_model: a network computes the target, under the step's autocast (bf16 tolerance), from a teacher file or
    # the student; state: the prefix of what it keeps in the checkpoint (the momentum teacher's EMA), or None;
    # per_tubelet: a tubelet's targets depend on its own frames only (the contract test's teacher is an image model;
    # a video encoder's attention mixes time).
    "pixel": {"runs_model": False, "state": None, "per_tubelet": True},
    "hog": {"runs_model": False, "state": None, "per_tubelet": True},
    "teacher": {"runs_model": True, "state": None, "per_tubelet": True},
    "momentum": {"runs_model": True, "state": "ema.", "per_tubelet": False},
}
MODEL_TARGET_OVERRIDES = {
    "teacher": lambda tmp: [f"targets.t.path={tmp / 'teacher.pt'}"],
    "momentum": lambda tmp: [],  # its width is the student's
}
"""What a target running a model needs beyond its defaults (a teacher file, the student's width)."""


def target(kind: str, tmp_path_factory=None):
    """A target of ``kind`` at its defaults on the (2, 8, 8) grid; one that runs a model comes out of a tiny method
    (a ``vit_test`` student; a ``vit_test`` image teacher saved to a temporary file)."""
    if not TARGET_TRAITS[kind]["runs_model"]:
        return build_target(kind, config.TARGETS[kind](), TARGET_PATCH, 3)
    from tests.test_teacher import save_vmim_teacher

    tmp = tmp_path_factory.mktemp(kind)
    save_vmim_teacher(tmp / "teacher.pt", patch=TARGET_PATCH[1], tubelet=1)
    t, p, _ = TARGET_PATCH
    torch.manual_seed(0)
    method = build_method(load_config(None, [
        "model.backbone=vit_test", f"model.patch_size={p}", f"model.tubelet_size={t}", "data.img_size=16",
        "data.num_frames=4", "data.datasets.digits_images.weight=1", f"targets.t.kind={kind}",
        "targets.t.head.depth=0", "targets.t.head.dim=32", "targets.t.head.heads=2",
        *MODEL_TARGET_OVERRIDES[kind](tmp)]))
    return method.targets["t"]


def test_every_target_is_described():
    assert set(TARGET_TRAITS) == set(TARGETS) == set(MODEL_TARGET_OVERRIDES) | {"pixel", "hog"}


@pytest.mark.parametrize("kind", list(TARGETS))
def test_target_holds_no_trainable_state(kind, tmp_path_factory):
    t = target(kind, tmp_path_factory)
    assert not [n for n, p in t.named_parameters() if p.requires_grad]
    prefix = TARGET_TRAITS[kind]["state"]
    kept = [k for k in t.state_dict() if prefix is None or not k.startswith(prefix)]
    assert not kept, f"a target must not enter the student's checkpoint: {kept[:5]}"


@pytest.mark.parametrize("kind", list(TARGETS))
def test_target_output_for_clips_and_images(kind, tmp_path_factory):
    t = target(kind, tmp_path_factory)
    normalizer = InputNormalizer(config.IMAGENET_MEAN, config.IMAGENET_STD, tubelet_size=TARGET_PATCH[0])
    clip = normalizer.pixels(clip_batch(b=2, t=4, size=16, seed=1)).clone().requires_grad_(True)
    out = t(clip)
    assert out.shape == (2, 2 * 2 * 2, t.dim) and out.dtype == torch.float32
    assert not out.requires_grad and torch.isfinite(out).all()
    image = normalizer.pixels(clip_batch(b=2, t=1, size=16, seed=2))  # repeated to the tubelet
    assert image.shape[2] == TARGET_PATCH[0]
    image_out = t(image)
    assert image_out.shape == (2, 2 * 2, t.dim) and image_out.dtype == torch.float32
    # the first H'W' tokens are the first tubelet's: a clip starting with the image starts with its tokens
    joined = torch.cat([image, clip.detach()[:, :, TARGET_PATCH[0]:]], dim=2)
    if TARGET_TRAITS[kind]["per_tubelet"]:
        torch.testing.assert_close(t(joined)[:, :4], image_out)
    else:
        assert not torch.allclose(t(joined)[:, :4], image_out)


@pytest.mark.parametrize("kind", list(TARGETS))
def test_target_float32_under_autocast(kind, tmp_path_factory):
    """Hand-made targets ignore autocast (float32 math); model targets run in bf16 under it, return float32."""
    t = target(kind, tmp_path_factory)
    clip = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(3), requires_grad=True)
    reference = t(clip)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = t(clip)
    assert out.dtype == torch.float32 and not out.requires_grad
    if TARGET_TRAITS[kind]["runs_model"]:
        torch.testing.assert_close(out, reference, atol=0.1, rtol=0.05)
        assert not torch.equal(out, reference)  # it did run in bf16
    else:
        torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------

HEAD_TRAITS = {
    # needs_encoded: reads the encoder's own tokens at the query, so it cannot predict a position the encoder did
    # not encode; mixes: each prediction depends on every encoder token (attention), not only on its own position.
    "decoder": {"needs_encoded": False, "mixes": True, "cls": DecoderHead},
    "linear": {"needs_encoded": True, "mixes": False, "cls": LinearHead},
}
SMALL_HEAD = {"depth": 1, "dim": 32, "heads": 2}
IN_DIM, OUT_DIM, HB = 16, 12, 3


def head(kind: str, pos_embed: str = "sincos_3d", **changes):
    torch.manual_seed(0)
    return build_head(with_fields(config.HEADS[kind](), **{**SMALL_HEAD, **changes}), IN_DIM, OUT_DIM, pos_embed)


def encoded(dense: bool, seed: int = 0, requires_grad: bool = False) -> tuple[EncoderOutput, torch.Tensor]:
    """An encoder output on :data:`GRID` for HB samples and its encoder mask (N_MASKED masked per sample)."""
    mask = make_mask(HB, N, N_MASKED, seed=seed + 1)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randn(HB, N if dense else N - N_MASKED, IN_DIM, generator=gen).requires_grad_(requires_grad)
    return EncoderOutput(tokens, None if dense else ~mask, GRID), mask


def test_every_head_is_described():
    assert set(HEADS) == set(HEAD_TRAITS), "describe the new head's traits in HEAD_TRAITS"


@pytest.mark.parametrize("pos_embed", POS_EMBEDS)
@pytest.mark.parametrize("kind", list(HEADS))
def test_head_output_shapes(kind, pos_embed):
    h = head(kind, pos_embed).eval()
    assert isinstance(h, HEAD_TRAITS[kind]["cls"])
    enc, mask = encoded(dense=False)
    with torch.no_grad():
        assert h(enc, ~mask).shape == (HB, N - N_MASKED, OUT_DIM)  # the visible positions
        if HEAD_TRAITS[kind]["needs_encoded"]:
            with pytest.raises(ValueError):
                h(enc, mask)
        else:
            assert h(enc, mask).shape == (HB, N_MASKED, OUT_DIM)
        dense, _ = encoded(dense=True)
        for query, m in [(mask, N_MASKED), (torch.ones(HB, N, dtype=torch.bool), N),
                         (make_mask(HB, N, 5, seed=7), 5)]:
            out = h(dense, query)
            assert out.shape == (HB, m, OUT_DIM) and torch.isfinite(out).all()


@pytest.mark.parametrize("kind", list(HEADS))
def test_head_without_mixing_predicts_each_position_on_its_own(kind):
    """A token-wise head (linear; a decoder with depth 0) predicts a position the same whichever other positions
    are queried with it, in row-major order of the query."""
    h = head(kind, depth=0).eval()
    enc, mask = encoded(dense=False)
    wide = query_for(kind, mask)
    narrow = wide.clone()
    for b in range(HB):  # drop the second queried position of each sample
        narrow[b, int(torch.nonzero(wide[b])[1])] = False
    keep = [i for i in range(int(wide[0].sum())) if i != 1]
    with torch.no_grad():
        torch.testing.assert_close(h(enc, narrow), h(enc, wide)[:, keep])
        dense, _ = encoded(dense=True)
        torch.testing.assert_close(h(dense, narrow), h(dense, wide)[:, keep])


@pytest.mark.parametrize("kind", list(HEADS))
def test_head_reads_where_the_encoder_tokens_sit(kind):
    """``present`` places the tokens: all-True means the same as None, and a mixing head's predictions change when
    the same tokens sit at other positions."""
    h = head(kind).eval()
    dense, mask = encoded(dense=True)
    query = query_for(kind, mask)
    every = EncoderOutput(dense.tokens, torch.ones(HB, N, dtype=torch.bool), GRID)
    with torch.no_grad():
        torch.testing.assert_close(h(every, query), h(dense, query))
    if not HEAD_TRAITS[kind]["mixes"]:
        return
    enc, mask = encoded(dense=False)
    moved = mask.roll(1, dims=1)  # the same count, other positions
    query = mask & moved  # predicted positions that neither variant encodes
    query = torch.stack([q & (torch.cumsum(q, 0) <= int(query.sum(1).min())) for q in query])  # equal counts
    assert query.sum(1).min() > 0
    with torch.no_grad():
        here = h(enc, query)
        there = h(EncoderOutput(enc.tokens, ~moved, GRID), query)
    assert not torch.allclose(here, there, atol=1e-4), "the predictions ignore where the encoder tokens sit"


def test_linear_head_reads_the_tokens_at_the_query_by_hand():
    h = head("linear").eval()
    weight, bias = h.proj.weight, h.proj.bias
    enc, mask = encoded(dense=False)
    visible = ~mask
    query = visible.clone()
    for b in range(HB):  # drop the first visible position of each sample from the query
        query[b, int(torch.nonzero(visible[b])[0])] = False
    with torch.no_grad():
        out = h(enc, query)
        want = torch.stack([enc.tokens[b, 1:] for b in range(HB)]) @ weight.T + bias
    torch.testing.assert_close(out, want)
    dense, _ = encoded(dense=True, seed=4)
    with torch.no_grad():
        want = torch.stack([dense.tokens[b][mask[b]] for b in range(HB)]) @ weight.T + bias
        torch.testing.assert_close(h(dense, mask), want)


def query_for(kind: str, mask: torch.Tensor) -> torch.Tensor:
    """Positions a head of ``kind`` can predict on a visible-only encoder: the masked ones, unless it needs encoder
    tokens there (then the visible ones)."""
    return ~mask if HEAD_TRAITS[kind]["needs_encoded"] else mask


@pytest.mark.parametrize("dense", [False, True], ids=["visible", "dense"])
@pytest.mark.parametrize("kind", list(HEADS))
def test_head_prediction_does_not_depend_on_batch_order_or_other_samples(kind, dense):
    h = head(kind).eval()
    enc, mask = encoded(dense=dense)
    query = query_for(kind, mask)
    perm = torch.tensor([2, 0, 1])
    with torch.no_grad():
        out = h(enc, query)
        shuffled = EncoderOutput(enc.tokens[perm], None if enc.present is None else enc.present[perm], enc.grid)
        torch.testing.assert_close(h(shuffled, query[perm]), out[perm])
        tokens = enc.tokens.clone()
        tokens[1] = torch.randn_like(tokens[1])
        changed = h(EncoderOutput(tokens, enc.present, enc.grid), query)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]])
    assert not torch.allclose(changed[1], out[1])


@pytest.mark.parametrize("dense", [False, True], ids=["visible", "dense"])
@pytest.mark.parametrize("kind", list(HEADS))
def test_head_gradient_reaches_encoder_tokens(kind, dense):
    h = head(kind).train()
    enc, mask = encoded(dense=dense, requires_grad=True)
    query = query_for(kind, mask)
    h(enc, query).square().sum().backward()
    grad = enc.tokens.grad
    assert grad is not None and torch.isfinite(grad).all()
    reached = grad.abs().sum(-1) > 0  # (HB, N_present)
    if HEAD_TRAITS[kind]["mixes"]:
        assert reached.all(), "every encoder token feeds a mixing head's predictions"
    else:  # a token-wise head: exactly the tokens at the query
        present = enc.present if enc.present is not None else torch.ones(HB, N, dtype=torch.bool)
        want = query[present].reshape(HB, -1)
        assert torch.equal(reached, want)
    for name, p in h.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name} got no gradient"


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------

LOSS_KNOWN_ANSWERS = [  # (kind, config changes, pred rows, target rows, per-row loss)
    ("mse", {}, [[1, 2, 3], [1, -1, 0]], [[0, 0, 0], [-1, 1, 0]], [14 / 3, 8 / 3]),
    ("l1", {}, [[1, 2, 3], [1, -1, 0]], [[0, 0, 0], [-1, 1, 0]], [2.0, 4 / 3]),
    # 0.5 x^2 / beta below beta, |x| - beta / 2 above it
    ("smooth_l1", {}, [[0, 0]], [[0.5, 3]], [(0.125 + 2.5) / 2]),
    ("smooth_l1", {"beta": 2.0}, [[0, 0]], [[0.5, 3]], [(0.0625 + 2.0) / 2]),
    ("smooth_l1", {"beta": 0.25}, [[0, 0]], [[0.5, 3]], [(0.375 + 2.875) / 2]),
    ("cosine", {}, [[1, 0], [1, 0], [1, 1], [3, 4]], [[0, 1], [-1, 0], [2, 2], [4, 3]], [1.0, 2.0, 0.0, 0.04]),
]


def loss_fn(kind: str, **changes):
    return build_loss(with_fields(config.LOSSES[kind](), **changes))


def test_every_loss_has_a_known_answer():
    assert set(LOSSES) <= {case[0] for case in LOSS_KNOWN_ANSWERS}, "add the new loss to LOSS_KNOWN_ANSWERS"


@pytest.mark.parametrize("kind", list(LOSSES))
def test_loss_shape_zero_and_positive(kind):
    fn = loss_fn(kind)
    gen = torch.Generator().manual_seed(0)
    pred, tgt = torch.randn(2, 5, 7, generator=gen), torch.randn(2, 5, 7, generator=gen)
    out = fn(pred, tgt)
    assert out.shape == (2, 5) and out.dtype == torch.float32
    assert (out > 0).all()
    tgt = tgt + (tgt.abs() < 1e-3).float()  # non-zero vectors (cosine)
    torch.testing.assert_close(fn(tgt, tgt), torch.zeros(2, 5), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind,changes,pred,tgt,want", LOSS_KNOWN_ANSWERS,
                         ids=[f"{c[0]}-{c[1]}" for c in LOSS_KNOWN_ANSWERS])
def test_loss_known_answer(kind, changes, pred, tgt, want):
    out = loss_fn(kind, **changes)(torch.tensor([pred], dtype=torch.float32), torch.tensor([tgt], dtype=torch.float32))
    torch.testing.assert_close(out, torch.tensor([want]), atol=1e-6, rtol=1e-6)


def test_weighted_mean_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    weight = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    torch.testing.assert_close(weighted_mean(per_token, weight), torch.tensor((1 + 3 + 5) / 3))
    torch.testing.assert_close(weighted_mean(per_token, torch.zeros(2, 3)), torch.tensor(0.0))


# ----------------------------------------------------------------------------------------------------
# Token sets
# ----------------------------------------------------------------------------------------------------

ENCODER_1x8 = [1, 1, 0, 1, 0, 1, 1, 0]  # True = masked by the encoder
DECODER_1x8 = [0, 1, 1, 0, 0, 1, 0, 1]  # True = dropped by the decoder: it keeps positions 0, 3, 4, 6
TOKEN_SET_KNOWN_ANSWERS = {  # name -> (query, weight) on the 1x8 example
    "masked": (ENCODER_1x8, [1, 1, 1, 1, 1]),
    "visible": ([0, 0, 1, 0, 1, 0, 0, 1], [1, 1, 1]),
    "decoder_kept": ([1, 0, 0, 1, 1, 0, 1, 0], [1, 1, 0, 1]),  # the loss counts the encoder-masked ones
}


def test_every_token_set_has_a_known_answer():
    assert set(TOKEN_SETS) == set(TOKEN_SET_KNOWN_ANSWERS), "add the new token set to TOKEN_SET_KNOWN_ANSWERS"


@pytest.mark.parametrize("name", list(TOKEN_SETS))
def test_token_set_known_answer(name):
    masks = Masks(torch.tensor([ENCODER_1x8], dtype=torch.bool), torch.tensor([DECODER_1x8], dtype=torch.bool))
    query, weight = TOKEN_SETS[name](masks)
    want_query, want_weight = TOKEN_SET_KNOWN_ANSWERS[name]
    assert query.dtype == torch.bool and query.tolist() == [[bool(v) for v in want_query]]
    assert weight.is_floating_point() and weight.tolist() == [[float(v) for v in want_weight]]


@pytest.mark.parametrize("name", list(TOKEN_SETS))
def test_token_set_contract(name):
    masks = Masks(make_mask(4, N, N_MASKED, seed=0), make_mask(4, N, 6, seed=1))
    query, weight = TOKEN_SETS[name](masks)
    assert query.shape == (4, N) and query.dtype == torch.bool
    counts = query.sum(1)
    assert (counts == counts[0]).all(), f"query counts differ between samples: {counts.tolist()}"
    assert weight.shape == (4, int(counts[0])) and weight.is_floating_point()
    assert ((weight == 0) | (weight == 1)).all()


# ----------------------------------------------------------------------------------------------------
# Shipped configs
# ----------------------------------------------------------------------------------------------------

def load_shipped(path: Path):
    # configs/methods/ are method recipes without data: they run once a dataset is added
    return load_config(path, ["data.datasets.digits_images.weight=1"] if path.parent.name == "methods" else [])


ALL_CONFIG_FILES = sorted((ROOT / "configs").rglob("*.yaml"))
CONFIG_FILES = [p for p in ALL_CONFIG_FILES if load_shipped(p).task == "pretrain"]
FINETUNE_CONFIG_FILES = [p for p in ALL_CONFIG_FILES if p not in CONFIG_FILES]


@pytest.mark.parametrize("path", FINETUNE_CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_finetune_config_builds_its_classifier(path):
    from vmim.meta_arch.classification import build_classification as build_classifier

    cfg = load_shipped(path)
    with torch.device("meta"):
        model = build_classifier(cfg, cfg.head.num_classes or 10)
    m, bb = cfg.model, model.backbone
    assert tuple(bb.patch_size) == (m.tubelet_size, m.patch_size, m.patch_size) and bb.global_pool == m.global_pool
    layer_norm = torch.nn.LayerNorm
    if hasattr(m, "fc_norm"):  # a ViT normalizes either every token or the pooled features (MViT: its own pooling)
        assert isinstance(bb.fc_norm, layer_norm) == m.fc_norm and isinstance(bb.norm, layer_norm) != m.fc_norm
    assert model.head.in_features == bb.embed_dim and model.dropout.p == cfg.head.dropout
    assert not cfg.eval.datasets or all(ds.kind in config.DATASETS for ds in cfg.eval.datasets.values())


def test_configs_found():
    assert len(CONFIG_FILES) >= 5 and len(FINETUNE_CONFIG_FILES) >= 5


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_builds_its_method(path, tmp_path_factory):
    cfg = load_shipped(path)
    for name, t in cfg.targets.items():  # MVD's stage-1 teacher runs are not on this machine: a tiny stand-in (the
        # head's output width then follows the stand-in; everything else is checked as shipped)
        if t.kind == "teacher" and not t.timm_model and not Path(t.path).exists():
            from tests.test_teacher import save_vmim_teacher

            t.path = str(tmp_path_factory.mktemp("teacher") / f"{name}.pt")
            save_vmim_teacher(Path(t.path), patch=cfg.model.patch_size, tubelet=1, img=2 * cfg.model.patch_size)
    with torch.device("meta"):
        method = build_method(cfg)
    assert all(p.is_meta for p in method.parameters())
    bb, m = method.backbone, cfg.model
    assert tuple(bb.patch_size) == (m.tubelet_size, m.patch_size, m.patch_size)
    assert bb.dense == m.dense and bb.decoder_pos_embed == m.pos_embed
    assert tuple(bb.grid((1, m.in_chans, cfg.data.num_frames, cfg.data.img_size, cfg.data.img_size))) == video_grid(cfg)
    assert set(method.targets) == set(method.heads) == set(cfg.targets)
    assert method.token_sets == {n: t.token_set for n, t in cfg.targets.items()}
    assert method.weights == {n: t.weight for n, t in cfg.targets.items()}
    for name, t in cfg.targets.items():
        built = method.targets[name]
        assert type(built) is TARGETS[t.kind] and tuple(built.patch_size) == tuple(bb.patch_size)
        for key in own_fields(type(t), config.TargetConfig):  # norm, nbins, cell_size, ...
            if key == "dim" and t.dim == 0:  # 0 = the student's width, set when bound
                assert built.dim == bb.dims[t.blocks[0]], f"targets.{name}.dim"
                continue
            assert getattr(built, key) == getattr(t, key), f"targets.{name}.{key}"
        h = method.heads[name]
        assert isinstance(h, HEAD_TRAITS[t.head.kind]["cls"]), f"targets.{name}.head"
        linears = [mod for mod in h.modules() if isinstance(mod, torch.nn.Linear)]
        assert linears[-1].out_features == built.dim and linears[0].in_features == bb.embed_dim
        if isinstance(h, DecoderHead):
            assert len(h.blocks) == t.head.depth and h.dim == t.head.dim
            assert all(blk.attn.num_heads == t.head.heads for blk in h.blocks)
            assert all(blk.mlp.fc1.out_features == int(t.head.dim * t.head.mlp_ratio) for blk in h.blocks)
        a, b = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
        torch.testing.assert_close(method.losses[name](a, b), LOSSES[t.loss.kind](t.loss)(a, b))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_shipped_config_masks_serve_its_token_sets(path):
    """The masks a config draws give every target's token set equal query counts across samples."""
    cfg = load_shipped(path)
    generators = build_mask_generators(cfg)
    assert ("decoder" in generators) == (cfg.decoder_masking.kind != "none")
    assert ("decoder" in generators) == any(t.token_set == "decoder_kept" for t in cfg.targets.values())
    grids = [video_grid(cfg), (1, *video_grid(cfg)[1:])]
    for grid in grids:
        per_sample = []
        for seed in range(3):  # as the data pipeline: every mask of a sample from that sample's generator, in order
            g = rng(seed)
            per_sample.append(draw_masks(generators, grid, g))
        masks = Masks.stack(per_sample)
        for name, t in cfg.targets.items():
            query, weight = TOKEN_SETS[t.token_set](masks)
            counts = query.sum(1)
            assert (counts == counts[0]).all() and weight.shape == (3, int(counts[0])), f"targets.{name} on {grid}"
            assert weight.sum() > 0, f"targets.{name}: no token counts on {grid}"
