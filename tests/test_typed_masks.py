"""Typed masks (:mod:`vmim.masking.masks`) through the collate and a loader worker, and the token layouts
(:mod:`vmim.models.layouts`) a ViT composes: selection by flags, unchanged state-dict keys, one class per regime."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.conftest import make_mask, rng
from vmim.data.pretrain_dataset import collate
from vmim.masking import Masks, SampleMasks, WindowedMask, draw_masks, window_mask
from vmim.models import layouts
from vmim.models.layouts import TOKEN_LAYOUTS, Dense, select_layout, token_layout
from vmim.models.vit import vit_test


def test_masks_stack_cat_head_and_pickle():
    samples = [SampleMasks(np.array([True, False, True]), np.array([False, False, True])),
               SampleMasks(np.array([False, True, True]), np.array([True, False, False]))]
    masks = Masks.stack(samples)
    assert masks.encoder.tolist() == [[True, False, True], [False, True, True]]
    assert masks.decoder.tolist() == [[False, False, True], [True, False, False]] and masks.windows is None
    both = Masks.cat([masks, masks.head(1)])
    assert both.encoder.shape == (3, 3) and torch.equal(both.encoder[2], masks.encoder[0])
    again = pickle.loads(pickle.dumps(both))
    assert all(torch.equal(a, b) for a, b in zip(again.tensors(), both.tensors()))
    assert not masks.windowed and masks.slots is None


def test_windowed_draw_fills_windows_and_slots():
    grid = (1, 6, 6)
    drawn = window_mask(grid, 0.5, rng(0), num_windows=2, window_size=3)
    sample = SampleMasks.from_roles({"encoder": drawn})
    assert isinstance(drawn, WindowedMask) and sample.decoder is None
    masks = Masks.stack([sample, sample])
    assert masks.windowed and masks.windows.shape == (2, 2, 1, 3, 3)
    assert torch.equal(masks.slots[0], torch.from_numpy(drawn.windows.reshape(-1)))


def test_from_roles_refuses_unknown_roles_and_windowed_decoders():
    with pytest.raises(KeyError, match="encoder_windows"):
        SampleMasks.from_roles({"encoder": np.zeros(4, bool), "encoder_windows": np.zeros(4, int)})
    with pytest.raises(ValueError, match="decoder"):
        SampleMasks.from_roles({"encoder": np.zeros(4, bool),
                                "decoder": WindowedMask(np.zeros(4, bool), np.zeros((1, 1, 2, 2), np.int64))})


class _Samples(torch.utils.data.Dataset):
    """Samples as the pretraining dataset returns them: a clip and its drawn masks (tensors)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        gen = {"encoder": lambda grid, r: r.permutation(8) < 3, "decoder": lambda grid, r: r.permutation(8) < 4}
        return {"clip": torch.full((1, 1, 2, 2), i, dtype=torch.uint8), "masks": draw_masks(gen, (2, 2, 2), rng(i))
                .torch(), "label": i, "dataset": 0, "bad": []}


def test_collate_builds_masks_in_a_loader_worker():
    """The batch's masks cross the worker's pipe as a Masks, equal to those collated in this process."""
    here = collate([_Samples()[i] for i in range(4)])
    (batch,) = list(DataLoader(_Samples(), batch_size=4, num_workers=1, collate_fn=collate))
    assert isinstance(batch["masks"], Masks) and batch["masks"].encoder.shape == (4, 8)
    assert torch.equal(batch["masks"].encoder, here["masks"].encoder)
    assert torch.equal(batch["masks"].decoder, here["masks"].decoder)
    assert (batch["masks"].encoder.sum(1) == 3).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs an accelerator")
def test_the_loaders_pin_memory_pins_masks():
    from torch.utils.data._utils.pin_memory import pin_memory

    pinned = pin_memory({"masks": Masks(make_mask(2, 8, 3))})["masks"]
    assert isinstance(pinned, Masks) and pinned.encoder.is_pinned()


def test_layout_selection_by_flags():
    assert type(select_layout(False, "tokens")).__name__ == "VisibleOnly"
    assert type(select_layout(False, "pixels")).__name__ == "VisibleOnly"
    assert type(select_layout(True, "tokens")).__name__ == "DenseTokens"
    assert type(select_layout(True, "pixels")).__name__ == "DensePixels"
    assert type(select_layout(True, "tokens", windowed=True)).__name__ == "Windows"
    with pytest.raises(ValueError, match="LoMaR"):
        select_layout(False, "tokens", windowed=True)


@pytest.mark.parametrize("dense, mask_in, token_shape", [
    (False, "tokens", None), (True, "tokens", (1, 1, 64)), (True, "pixels", (1, 3, 1, 1, 1))])
def test_layouts_keep_the_state_dict_keys(dense, mask_in, token_shape):
    """The layout holds nothing: the ViT's keys are the blocks', the stem's and, when dense, its own mask token."""
    model = vit_test(patch_size=4, tubelet_size=2, dense=dense, mask_in=mask_in)
    keys = set(model.state_dict())
    assert ("mask_token" in keys) == dense
    assert {k for k in keys if not k.startswith(("blocks.", "patch_embed.", "norm."))} <= {"mask_token"}
    if token_shape is not None:
        assert tuple(model.mask_token.shape) == token_shape


def test_a_new_regime_is_one_class_and_one_registration():
    """A dense layout that zeroes masked tokens: registered once, a ViT with its mask_in runs it (and keeps a mask
    token it does not use: no shape)."""

    @token_layout
    class DenseZeros(Dense):
        name, mask_in = "dense_zeros", "zeros"

        def fill_tokens(self, stem, tokens, mask):
            return tokens.masked_fill(mask.unsqueeze(-1), 0.0)

    try:
        torch.manual_seed(0)
        model = vit_test(patch_size=4, tubelet_size=2, dense=True, mask_in="zeros", pos_embed="none").eval()
        x, mask = torch.randn(2, 3, 4, 8, 8), make_mask(2, 8, 3)
        tokens, present = model.embed(x, mask)
        assert present is None and model.mask_token is None
        assert torch.equal(tokens[mask], torch.zeros(6, 64))
        torch.testing.assert_close(tokens[~mask], model.patch_embed(x)[~mask])
        assert model(x, mask).tokens.shape == (2, 8, 64)
    finally:
        del TOKEN_LAYOUTS["dense_zeros"]
    assert "zeros" not in layouts.mask_ins()
