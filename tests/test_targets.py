"""Reconstruction targets against hand-derived answers.

HOG convention used in the derivations below (SlowFast ``HOGLayerC``): conv2d is a cross-correlation, so with
weight_x = [[1,0,-1],[2,0,-2],[1,0,-1]]

    gx(r, c) = sum_{dr=-1..1} w(dr) * (x[r+dr, c-1] - x[r+dr, c+1]),   w = (1, 2, 1)   ("left minus right")
    gy(r, c) = sum_{dc=-1..1} w(dc) * (x[r-1, c+dc] - x[r+1, c+dc])                   ("top minus bottom")

and bin = floor(atan2(gx, gy) / pi * nbins) mod nbins.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vmim import config
from vmim.targets import TARGETS, HOGTarget, PixelTarget, Target, build_target, hog_histograms

NBINS = 9


def one_hot(index: int, size: int = NBINS) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(index), size).float()


def vertical_step(col: int, size: int = 32) -> torch.Tensor:
    """``(size, size)`` image: 0 left of ``col``, 1 from ``col`` on."""
    return (torch.arange(size) >= col).float().expand(size, size).clone()


def hog1(image: torch.Tensor) -> torch.Tensor:
    """HOG of one single-channel ``(H, W)`` image -> ``(nbins, H/8, W/8)``."""
    return hog_histograms(image[None, None])[0, 0]


def assert_cells(hist: torch.Tensor, expected: dict[tuple[int, int], torch.Tensor]) -> None:
    """Checks the ``(nbins, rows, cols)`` histogram of each listed cell."""
    for (i, j), want in expected.items():
        torch.testing.assert_close(hist[:, i, j], want, atol=1e-6, rtol=0, msg=f"cell {(i, j)}")


# ----------------------------------------------------------------------------------------------------
# hog_histograms
# ----------------------------------------------------------------------------------------------------


def test_hog_vertical_edge_single_bin_in_edge_cells():
    # Step at column 12: columns 11 and 12 see x[c-1] = 0, x[c+1] = 1 in all three rows -> gx = (1+2+1)*(0-1) = -4;
    # every column is constant in r (reflect padding repeats rows) -> gy = 0.
    # atan2(-4, 0) = -pi/2 -> -4.5 -> floor -5 -> -5 mod 9 = bin 4. Columns 11, 12 lie in cell column 1 (8..15).
    hist = hog1(vertical_step(12))
    assert hist.shape == (NBINS, 4, 4)
    zero = torch.zeros(NBINS)
    assert_cells(hist, {(i, j): one_hot(4) if j == 1 else zero for i in range(4) for j in range(4)})


def test_hog_vertical_edge_is_unsigned():
    # Bright-to-dark instead: gx = +4 -> atan2(4, 0) = pi/2 -> 4.5 -> bin 4 again (orientation over [0, pi)).
    torch.testing.assert_close(hog1(1 - vertical_step(12)), hog1(vertical_step(12)))


@pytest.mark.parametrize("flip", [False, True])
def test_hog_horizontal_edge_bin_0(flip):
    # Step at row 20: rows 19, 20 -> gy = 4 * (0 - 1) = -4 (or +4 flipped), gx = 0.
    # atan2(0, -4) = pi -> 9 -> 9 mod 9 = bin 0 (atan2(-0., -4) = -pi -> -9 -> bin 0 too); atan2(0, 4) = 0 -> bin 0.
    # Rows 19 and 20 lie in cell row 2 (16..23).
    image = vertical_step(20).T.contiguous()
    hist = hog1(1 - image if flip else image)
    zero = torch.zeros(NBINS)
    assert_cells(hist, {(i, j): one_hot(0) if i == 2 else zero for i in range(4) for j in range(4)})


def test_hog_diagonal_edge_bin_6():
    # x = 1 where c >= r. At a pixel on the diagonal (d = c - r = 0):
    #   gx = 1*(x[r-1,c-1] - x[r-1,c+1]) + 2*(x[r,c-1] - x[r,c+1]) + 1*(x[r+1,c-1] - x[r+1,c+1])
    #      = 1*(1 - 1) + 2*(0 - 1) + 1*(0 - 1) = -3
    #   gy = 1*(x[r-1,c-1] - x[r+1,c-1]) + 2*(x[r-1,c] - x[r+1,c]) + 1*(x[r-1,c+1] - x[r+1,c+1])
    #      = 1*(1 - 0) + 2*(1 - 0) + 1*(1 - 1) = 3
    # The image only depends on d and is symmetric under (r, c) -> (-c, -r), which maps gx to -gy: so gx = -gy at
    # every pixel (d = -1 and d = 1 too). atan2(-g, g) = -pi/4 -> -2.25 -> floor -3 -> -3 mod 9 = bin 6.
    # Corner cells (0, 0), (3, 3) are left out: reflect padding zeroes gy on row 0 (and gx on column 31).
    r, c = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    hist = hog1((c >= r).float())
    zero = torch.zeros(NBINS)
    edge = {cell: one_hot(6) for cell in [(1, 1), (2, 2), (1, 2), (2, 1), (0, 1), (1, 0)]}
    far = {cell: zero for cell in [(0, 2), (0, 3), (1, 3), (2, 0), (3, 0), (3, 1)]}
    assert_cells(hist, edge | far)


def test_hog_antidiagonal_edge_bin_2():
    # x = 1 where r + c >= 31: brighter to the right and below -> gx < 0, gy < 0, and the image is symmetric under
    # the transpose, which swaps gx and gy, so gx = gy = -g. atan2(-g, -g) = -3pi/4 -> -6.75 -> floor -7 -> bin 2.
    r, c = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    hist = hog1((r + c >= 31).float())
    zero = torch.zeros(NBINS)
    assert_cells(hist, {(1, 2): one_hot(2), (2, 1): one_hot(2), (0, 0): zero, (3, 3): zero, (1, 0): zero})


@pytest.mark.parametrize("k", range(NBINS))
@pytest.mark.parametrize("turn", [0.0, math.pi])
def test_hog_ramp_lands_in_each_bin(k, turn):
    # Plane x = a*c + b*r: gx = 4*(x[c-1] - x[c+1]) = -8a and gy = -8b at every interior pixel. Choosing
    # (a, b) = -(sin th, cos th) / 8 gives atan2(gx, gy) = th; th at the centre of bin k (+ pi: same orientation)
    # -> bin k. Interior cells (rows/cols 8..23) do not touch the reflect-padded border.
    theta = (k + 0.5) * math.pi / NBINS + turn
    theta = math.atan2(math.sin(theta), math.cos(theta))  # into (-pi, pi]
    r, c = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = -(math.sin(theta) * c + math.cos(theta) * r) / 8
    assert_cells(hog1(image), {cell: one_hot(k) for cell in [(1, 1), (1, 2), (2, 1), (2, 2)]})


def test_hog_magnitude_weighted_votes_in_a_cell():
    # x = v(c) + 2 h(r), v = step at column 12, h = step at row 20. Sobel is linear and v is constant in r, h in c:
    # gx = -4 on columns 11, 12 and gy = -8 on rows 19, 20, else 0. Cell (2, 1) = rows 16..23, cols 8..15:
    #   12 pixels (cols 11-12, 6 rows) with (gx, gy) = (-4, 0): bin 4, weight 4 each -> 48
    #   12 pixels (rows 19-20, 6 cols) with (0, -8): bin 0, weight 8 each -> 96
    #    4 pixels (rows 19-20, cols 11-12) with (-4, -8): atan2 = -(pi - atan(1/2)) = -2.678 -> -7.67 -> floor -8
    #      -> bin 1, weight sqrt(80) each -> 4 sqrt(80)
    image = vertical_step(12) + 2 * vertical_step(20).T
    want = torch.zeros(NBINS)
    want[0], want[1], want[4] = 96, 4 * math.sqrt(80), 48
    assert_cells(hog1(image), {(2, 1): want / want.norm()})


@pytest.mark.parametrize("value", [0.0, 0.7, 1.0, -2.1])
def test_hog_constant_image_is_zero(value):
    # No gradient anywhere: every cell must stay all zeros, not a normalized histogram of float round-off
    # (a fused 3x3 float32 conv gives |gy| ~ 6e-8 on a 0.7 image).
    hist = hog_histograms(torch.full((2, 3, 32, 32), value))
    assert torch.count_nonzero(hist) == 0


def slowfast_hog(images: torch.Tensor, nbins: int = NBINS, pool: int = 8) -> torch.Tensor:
    """Float64 transcription of SlowFast's ``HOGLayerC.forward`` (fused 3x3 depthwise conv, scatter_add_)."""
    x = images.double()
    c = x.shape[1]
    weight_x = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=x.dtype).view(1, 1, 3, 3).repeat(c, 1, 1, 1)
    x = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    gx = torch.nn.functional.conv2d(x, weight_x, groups=c)
    gy = torch.nn.functional.conv2d(x, weight_x.transpose(2, 3), groups=c)
    norm = torch.stack([gx, gy], dim=-1).norm(dim=-1)
    phase = torch.atan2(gx, gy) / math.pi * nbins
    b, _, h, w = norm.shape
    out = torch.zeros(b, c, nbins, h, w, dtype=x.dtype)
    out.scatter_add_(2, phase.view(b, c, 1, h, w).floor().long() % nbins, norm.view(b, c, 1, h, w))
    out = out.unfold(3, pool, pool).unfold(4, pool, pool).sum(dim=[-1, -2])
    return torch.nn.functional.normalize(out, p=2, dim=2)


def test_hog_matches_slowfast_transcription():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 3, 40, 48), generator=gen).float() / 256
    torch.testing.assert_close(hog_histograms(images), slowfast_hog(images).float(), atol=1e-5, rtol=0)


def test_hog_shape_crops_remainder():
    hist = hog_histograms(torch.rand(2, 3, 35, 41), nbins=NBINS, cell_size=8)
    assert hist.shape == (2, 3, NBINS, 35 // 8, 41 // 8)
    assert hog_histograms(torch.rand(1, 1, 32, 32), nbins=6, cell_size=4).shape == (1, 1, 6, 8, 8)


def test_hog_channels_are_independent():
    image = torch.zeros(1, 3, 32, 32)
    image[0, 1] = vertical_step(12)
    hist = hog_histograms(image)
    assert torch.count_nonzero(hist[:, [0, 2]]) == 0
    torch.testing.assert_close(hist[0, 1], hog1(vertical_step(12)))


def test_hog_invariant_to_positive_affine_per_channel():
    # Gradients scale by s > 0 (orientation unchanged), the offset cancels, the per-cell L2 norm removes s.
    # Dyadic pixels, scales and offsets keep the arithmetic exact, so no vote moves across a bin boundary.
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (2, 3, 32, 32), generator=gen).float() / 256
    scale = torch.tensor([2.0, 0.5, 4.0]).view(1, 3, 1, 1)
    offset = torch.tensor([0.25, -1.0, 3.0]).view(1, 3, 1, 1)
    reference = hog_histograms(image)
    assert torch.count_nonzero(reference) > 0
    torch.testing.assert_close(hog_histograms(scale * image + offset), reference, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------------------
# HOGTarget
# ----------------------------------------------------------------------------------------------------


def test_hog_target_uses_first_frame_of_each_tubelet():
    # Patch (2, 16, 16) on a (4, 32, 32) clip: tubelets use frames 0 and 2; frames 1 and 3 carry edges that must be
    # ignored. Frame 2 has a vertical step at column 12 in the green channel only: bin 4 (see above) in cell column 1,
    # i.e. token column w = 0, cell (i, j) = (0 or 1, 1) within the token. Token feature index (c, bin, i, j) ->
    # c*36 + bin*4 + i*2 + j: 1*36 + 4*4 + 0*2 + 1 = 53 and 1*36 + 16 + 2 + 1 = 55.
    clip = torch.zeros(2, 3, 4, 32, 32)
    clip[:, :, 1] = vertical_step(20).T
    clip[:, 1, 2] = vertical_step(12)
    clip[:, :, 3] = torch.rand(32, 32)
    target = HOGTarget((2, 16, 16), in_chans=3)
    out = target(clip)
    assert target.dim == 108 and out.shape == (2, 8, 108) and out.dtype == torch.float32
    want = torch.zeros(2, 8, 108)
    for token in (4, 6):  # (n, h, w) = (1, 0, 0), (1, 1, 0): token = (n*2 + h)*2 + w
        want[:, token, [53, 55]] = 1
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_hog_target_token_layout_matches_hog_histograms():
    gen = torch.Generator().manual_seed(1)
    clip = torch.rand(2, 3, 4, 32, 48, generator=gen)
    out = HOGTarget((2, 16, 16))(clip)
    assert out.shape == (2, 2 * 2 * 3, 108)
    for n, frame in enumerate((0, 2)):
        hist = hog_histograms(clip[:, :, frame])  # (B, C, 9, 4, 6): cell (i, j) of token (h, w) is (2h + i, 2w + j)
        other = hog_histograms(clip[:, :, frame + 1])
        for h in range(2):
            for w in range(3):
                token = (n * 2 + h) * 3 + w
                cells = hist[:, :, :, 2 * h:2 * h + 2, 2 * w:2 * w + 2]  # (B, C, 9, 2, 2) = order (c, bin, i, j)
                torch.testing.assert_close(out[:, token], cells.reshape(2, 108))
                wrong_frame = other[:, :, :, 2 * h:2 * h + 2, 2 * w:2 * w + 2].reshape(2, 108)
                assert not torch.allclose(out[:, token], wrong_frame)


def test_hog_target_rejects_bad_cell_size():
    with pytest.raises(ValueError, match="cell_size"):
        HOGTarget((2, 16, 16), cell_size=6)
    assert HOGTarget((1, 16, 16), in_chans=1, nbins=6, cell_size=4).dim == 1 * 6 * 16


def test_hog_target_to_pixels_is_none():
    clip = torch.rand(1, 3, 2, 16, 16)
    target = HOGTarget((2, 16, 16))
    assert target.to_pixels(target(clip), clip) is None


# ----------------------------------------------------------------------------------------------------
# PixelTarget
# ----------------------------------------------------------------------------------------------------


def reference_tokens(clip: np.ndarray, patch: tuple[int, int, int], norm: str, eps: float = 1e-6) -> np.ndarray:
    """Loop-based numpy reference: ``(B, C, T, H, W)`` -> ``(B, N, t*p*p*C)`` in (t, h, w) order."""
    b, c, tt, hh, ww = clip.shape
    t, p, _ = patch
    tokens = []
    for n in range(tt // t):
        for h in range(hh // p):
            for w in range(ww // p):
                block = clip[:, :, n * t:(n + 1) * t, h * p:(h + 1) * p, w * p:(w + 1) * p]  # (B, C, t, p, p)
                values = block.transpose(0, 2, 3, 4, 1).reshape(b, -1, c)  # (B, t*p*p, C), channel last
                if norm == "per_channel":
                    mean = values.mean(axis=1, keepdims=True)
                    std = values.std(axis=1, ddof=1, keepdims=True)
                    values = (values - mean) / (std + eps)
                elif norm == "joint":
                    flat = values.reshape(b, -1)
                    mean = flat.mean(axis=1)[:, None, None]
                    var = flat.var(axis=1, ddof=1)[:, None, None]
                    values = (values - mean) / np.sqrt(var + eps)
                tokens.append(values.reshape(b, -1))
    return np.stack(tokens, axis=1)


@pytest.mark.parametrize("eps", [1e-6, 0.5])  # a large eps tells "on the std" from "inside the sqrt"
def test_pixel_per_channel_by_hand(eps):
    # One (2, 2, 2) token. Channel 0 = 0..7: mean 3.5, unbiased var = 2*(0.25 + 2.25 + 6.25 + 12.25)/7 = 6.
    # Channel 1 = 2v + 1: mean 8, std 2 sqrt(6). Channel 2 = 5 everywhere: std 0 -> (5 - 5)/(0 + eps) = 0.
    v = torch.arange(8.0)
    clip = torch.stack([v, 2 * v + 1, torch.full((8,), 5.0)]).view(1, 3, 2, 2, 2)
    want = torch.stack([(v - 3.5) / (math.sqrt(6) + eps), (2 * v + 1 - 8) / (2 * math.sqrt(6) + eps), 0 * v], -1)
    out = PixelTarget((2, 2, 2), in_chans=3, norm="per_channel", eps=eps)(clip)
    assert out.shape == (1, 1, 24)
    torch.testing.assert_close(out[0, 0], want.flatten())  # layout (t p p c): 8 pixels x 3 channels


@pytest.mark.parametrize("eps", [1e-6, 0.5])
def test_pixel_joint_by_hand(eps):
    # All 24 values: mean = (3.5 + 8 + 5) / 3 = 5.5; eps inside the sqrt.
    v = torch.arange(8.0)
    clip = torch.stack([v, 2 * v + 1, torch.full((8,), 5.0)]).view(1, 3, 2, 2, 2)
    values = torch.stack([v, 2 * v + 1, torch.full((8,), 5.0)], -1).flatten().numpy()
    var = ((values - 5.5) ** 2).sum() / 23
    want = (values - 5.5) / np.sqrt(var + eps)
    out = PixelTarget((2, 2, 2), norm="joint", eps=eps)(clip)
    np.testing.assert_allclose(out[0, 0].numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("norm", ["per_channel", "joint", "none"])
def test_pixel_matches_loop_reference(norm):
    gen = torch.Generator().manual_seed(2)
    clip = torch.rand(2, 3, 4, 6, 4, generator=gen)
    out = PixelTarget((2, 2, 2), norm=norm)(clip)
    assert out.shape == (2, 2 * 3 * 2, 24) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), reference_tokens(clip.double().numpy(), (2, 2, 2), norm), rtol=1e-4,
                               atol=1e-5)


def test_pixel_token_order_and_layout_from_position_codes():
    # Every pixel holds code(c, t, y, x) = 1000c + 100t + 10y + x; token (n, h, w) must hold tubelet n, row h, col w.
    C, T, H, W, t, p = 2, 4, 6, 4, 2, 2
    c, tt, y, x = torch.meshgrid(*(torch.arange(s) for s in (C, T, H, W)), indexing="ij")
    clip = (1000 * c + 100 * tt + 10 * y + x).float()[None]
    out = PixelTarget((t, p, p), in_chans=C, norm="none")(clip)[0]
    for n in range(T // t):
        for h in range(H // p):
            for w in range(W // p):
                token = out[(n * (H // p) + h) * (W // p) + w]
                for i, (dt, dy, dx, ch) in enumerate(np.ndindex(t, p, p, C)):
                    assert token[i] == 1000 * ch + 100 * (n * t + dt) + 10 * (h * p + dy) + (w * p + dx)


def test_pixel_token_order_matches_conv3d_patch_embed():
    # A Conv3d patch embedding whose output channel k copies tubelet pixel k of the (t p p c) layout.
    t, p, C = 2, 4, 3
    conv = torch.nn.Conv3d(C, t * p * p * C, kernel_size=(t, p, p), stride=(t, p, p), bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        for k, (dt, dy, dx, ch) in enumerate(np.ndindex(t, p, p, C)):
            conv.weight[k, ch, dt, dy, dx] = 1
        clip = torch.rand(2, C, 4, 8, 12)
        embed = conv(clip).flatten(2).transpose(1, 2)
    torch.testing.assert_close(PixelTarget((t, p, p), C, norm="none")(clip), embed)


@pytest.mark.parametrize("norm", ["per_channel", "joint", "none"])
def test_pixel_to_pixels_roundtrip(norm):
    clip = torch.rand(2, 3, 4, 8, 12)
    target = PixelTarget((2, 4, 4), norm=norm)
    torch.testing.assert_close(target.to_pixels(target(clip), clip), clip, atol=1e-5, rtol=1e-5)


def test_pixel_rejects_bad_norm_and_shapes():
    with pytest.raises(ValueError, match="norm"):
        PixelTarget((2, 4, 4), norm="batch")
    with pytest.raises(ValueError, match="divisible"):
        PixelTarget((2, 4, 4))(torch.rand(1, 3, 3, 8, 8))
    with pytest.raises(ValueError):
        PixelTarget((2, 4, 4), in_chans=3)(torch.rand(1, 1, 2, 8, 8))


# ----------------------------------------------------------------------------------------------------
# Shared contract and registry
# ----------------------------------------------------------------------------------------------------

TARGET_CASES = [
    pytest.param(lambda: PixelTarget((2, 16, 16), norm="per_channel"), id="pixel-per_channel"),
    pytest.param(lambda: PixelTarget((2, 16, 16), norm="joint"), id="pixel-joint"),
    pytest.param(lambda: HOGTarget((2, 16, 16)), id="hog"),
]


@pytest.mark.parametrize("make", TARGET_CASES)
def test_targets_no_grad_and_float32_under_autocast(make):
    target = make()
    assert not list(target.parameters())
    clip = torch.rand(2, 3, 4, 32, 32, requires_grad=True)
    reference = target(clip)
    assert not reference.requires_grad and reference.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = target(clip)
    assert not out.requires_grad and out.dtype == torch.float32
    torch.testing.assert_close(out, reference, atol=1e-6, rtol=0)


def test_build_target_from_config():
    pixel = build_target("pixel", config.PixelTargetConfig(norm="joint"), (2, 16, 16), 3)
    assert isinstance(pixel, PixelTarget) and pixel.norm == "joint" and pixel.dim == 2 * 16 * 16 * 3
    hog = build_target("hog", config.HOGTargetConfig(nbins=6, cell_size=4), (2, 16, 16), 1)
    assert isinstance(hog, HOGTarget) and isinstance(hog, Target) and hog.dim == 6 * 16
    assert set(TARGETS) == set(config.TARGETS)


def test_build_target_unknown_kind():
    with pytest.raises(KeyError, match="dino.*hog.*pixel"):
        build_target("dino", config.TargetConfig(), (2, 16, 16), 3)
