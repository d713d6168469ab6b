"""VideoMAE V2 dual masking: running-cell masks, the decoder_kept token set, the method and the recipe.

Everything V2 needs beyond the seams lives in registry entries (``running_cell`` in ``vmim.masking`` and
``vmim.config``, ``decoder_kept`` in ``vmim.meta_arch.token_sets`` and ``vmim.config``) and this test file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import clip_batch, make_mask, rng
from tests.test_method import PIXEL, method, pixel_target
from vmim import config
from vmim.config import ConfigError, load_config
from vmim.masking import MaskGenerator, Masks, build_mask_generators, running_cell_mask
from vmim.meta_arch import TOKEN_SETS

ROOT = Path(__file__).resolve().parents[1]
V2 = ["decoder_masking.kind=running_cell", "targets.pixel.token_set=decoder_kept"]
MINIMAL = ["targets.pixel.weight=1", "data.datasets.digits_images.weight=1"]


# ----------------------------------------------------------------------------------------------------
# Running cell masking
# ----------------------------------------------------------------------------------------------------


def test_running_cell_known_pattern_at_half():
    # queue [1, 1, 0, 0]; start p, slice t reads queue[(arange(4) + p + t + 1) % 4] as a 2x2 cell (row-major).
    # For p = 0: t0 diagonal, t1 bottom row, t2 anti-diagonal, t3 top row (VideoMAE V2 masking_generator.py).
    cells = {0: [[1, 0], [0, 1]], 1: [[0, 0], [1, 1]], 2: [[0, 1], [1, 0]], 3: [[1, 1], [0, 0]]}
    seen_starts = set()
    for seed in range(40):
        mask = running_cell_mask((6, 4, 6), 0.5, rng(seed)).reshape(6, 4, 6)
        first = mask[0, :2, :2].astype(int).tolist()
        start = next(p for p, cell in cells.items() if cell == first)  # slice 0 shows cell p + 1 ... shifted by p
        seen_starts.add(start)
        for t in range(6):
            want = np.tile(np.array(cells[(start + t) % 4], dtype=bool), (2, 3))
            np.testing.assert_array_equal(mask[t], want)
        assert mask.sum() == 6 * 4 * 6 // 2
    assert seen_starts == {0, 1, 2, 3}  # the start is drawn per sample


@pytest.mark.parametrize("ratio, per_cell", [(0.25, 1), (0.5, 2), (0.75, 3)])
def test_running_cell_counts_and_period(ratio, per_cell):
    mask = running_cell_mask((8, 4, 4), ratio, rng(3)).reshape(8, 4, 4)
    assert (mask.reshape(8, 2, 2, 2, 2).sum(axis=(2, 4)) == per_cell).all()  # every 2x2 cell, every slice
    np.testing.assert_array_equal(mask[:4], mask[4:])  # period 4
    assert (mask[:4].sum(axis=0) == per_cell).all()  # each position masked per_cell times in any 4 slices
    gen = MaskGenerator("running_cell", ratio, ratio)
    assert gen.num_masked((8, 4, 4)) == mask.sum()
    assert gen((1, 4, 4), rng(0)).sum() == per_cell * 4  # an image is one slice


def test_running_cell_rejects_odd_grids_and_ratios():
    with pytest.raises(ValueError, match="even"):
        running_cell_mask((2, 3, 4), 0.5, rng(0))
    with pytest.raises(ValueError):
        running_cell_mask((2, 4, 4), 0.1, rng(0))


def test_build_mask_generators_adds_the_decoder_mask():
    cfg = load_config(None, ["targets.pixel.token_set=decoder_kept", "decoder_masking.kind=running_cell",
                                    "data.datasets.digits_images.weight=1"])
    gens = build_mask_generators(cfg)
    assert list(gens) == ["encoder", "decoder"] and gens["decoder"].kind == "running_cell"
    assert gens["encoder"].kind == "tube"
    plain = load_config(None, ["targets.pixel.weight=1", "data.datasets.digits_images.weight=1"])
    assert list(build_mask_generators(plain)) == ["encoder"]


def test_decoder_kept_without_a_decoder_mask_names_it():
    with pytest.raises(KeyError, match="decoder"):
        TOKEN_SETS["decoder_kept"](Masks(make_mask(2, 16, 8)))


# ----------------------------------------------------------------------------------------------------
# Decoder masking in the method
# ----------------------------------------------------------------------------------------------------


def v2_batch():
    clip = clip_batch(b=2, t=8, size=32, seed=1)  # grid (4, 4, 4): 64 tokens
    encoder = torch.zeros(2, 64, dtype=torch.bool)
    encoder.view(2, 4, 16)[:, :, :12] = True  # tube: 12 of 16 per slice masked
    encoder.view(2, 4, 16)[1] = encoder.view(2, 4, 16)[1].roll(5, dims=-1)
    decoder = torch.zeros(2, 64, dtype=torch.bool)
    decoder.view(2, 4, 16)[:, :, ::2] = True  # half of every slice not reconstructed
    return {"clip": clip, "masks": Masks(encoder, decoder)}


def test_decoder_masking_builds_visible_plus_kept_and_counts_masked_and_kept():
    model = method(PIXEL, V2, ["data.img_size=32", "data.num_frames=8"]).train()
    batch = v2_batch()
    lengths = []
    model.heads["pixel"].blocks[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    out = model(batch)
    assert lengths == [16 + 32]  # 16 visible tokens + mask tokens at the 32 decoder-kept positions (of 64)
    enc, dec = batch["masks"].encoder, batch["masks"].decoder
    with torch.no_grad():
        _, predictions = model.predict(batch)
        query, weight, pred = predictions["pixel"]
        assert torch.equal(query, ~dec) and pred.shape == (2, 32, 2 * 8 * 8 * 3)
        counted = enc & ~dec  # masked for the encoder and kept by the decoder
        assert torch.equal(weight, enc[~dec].reshape(2, 32).float())
        err = ((pred - pixel_target(batch["clip"])[~dec].reshape(2, 32, -1)) ** 2).mean(-1)
        want = err[weight.bool()].mean()
        assert int(counted.sum()) == int(weight.sum())
    torch.testing.assert_close(out["loss/pixel"].detach(), want, atol=1e-5, rtol=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_decoder_masked_loss_ignores_pixels_outside_its_token_set():
    model = method(PIXEL, V2, ["data.img_size=32", "data.num_frames=8"]).eval()
    batch = v2_batch()
    enc, dec = batch["masks"].encoder, batch["masks"].decoder
    with torch.no_grad():
        base = model(batch)["loss/pixel"]
        for positions, should_change in ((enc & dec, False), (enc & ~dec, True)):
            token = int(torch.nonzero(positions[0])[0])
            n, rest = divmod(token, 16)
            i, j = divmod(rest, 4)
            changed = {**batch, "clip": batch["clip"].clone()}
            region = changed["clip"][0, :, 2 * n:2 * n + 2, 8 * i:8 * i + 8, 8 * j:8 * j + 8]
            changed["clip"][0, :, 2 * n:2 * n + 2, 8 * i:8 * i + 8, 8 * j:8 * j + 8] = 255 - region
            assert bool(model(changed)["loss/pixel"] != base) == should_change, (positions, token)


# ----------------------------------------------------------------------------------------------------
# Config and recipe
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, key, fragment", [
    (["decoder_masking.kind=running_cell"], "decoder_masking.kind", "decoder_kept"),  # drawn but unused
    (["targets.pixel.token_set=decoder_kept"], "targets.pixel.token_set", "decoder_masking"),  # nothing to read
    (V2 + ["decoder_masking.ratio_video=0.6"], "decoder_masking.ratio_video", "0.25, 0.5 or 0.75"),
    (V2 + ["data.img_size=48"], "decoder_masking.kind", "even"),  # a 3x3 token grid has no 2x2 cells
])
def test_v2_config_errors_name_the_key(overrides, key, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, MINIMAL + overrides)
    assert info.value.key == key and fragment in str(info.value)


def test_running_cell_is_also_an_encoder_masking():
    cfg = load_config(None, MINIMAL + ["masking.kind=running_cell", "masking.ratio_video=0.75",
                                       "masking.ratio_image=0.5"])
    gens = build_mask_generators(cfg)
    assert list(gens) == ["encoder"] and gens["encoder"].kind == "running_cell"
    assert gens["encoder"]((8, 14, 14), rng(0)).sum() == 8 * 14 * 14 * 3 // 4


def test_v2_recipe_loads_with_reference_settings():
    cfg = load_config(ROOT / "configs/methods/videomae_v2_vit_b.yaml", ["data.datasets.digits_images.weight=1"])
    assert type(cfg.decoder_masking) is config.RunningCellMaskingConfig and cfg.decoder_masking.ratio_video == 0.5
    assert cfg.masking.kind == "tube" and cfg.masking.ratio_video == 0.9
    assert cfg.targets["pixel"].token_set == "decoder_kept" and cfg.targets["pixel"].head.depth == 4
    gens = build_mask_generators(cfg)
    enc, dec = gens["encoder"]((8, 14, 14), rng(1)), gens["decoder"]((8, 14, 14), rng(1))
    assert (~enc).sum() == 160 and (~dec).sum() == 784  # the decoder builds 160 + 784 = 944 of 1568 tokens


def test_list_names_running_cell():
    out = subprocess.run([sys.executable, "-m", "vmim.cli", "list", "--no-params"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "running_cell" in out.stdout and "decoder_kept" in out.stdout
