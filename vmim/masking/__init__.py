"""Mask generators: numpy functions over a token grid, one per kind (:mod:`vmim.masking.strategies`); the typed
masks they make and a batch carries (:mod:`vmim.masking.masks`)."""

from .strategies import (MASK_COUNTS, MASKINGS, Grid, MaskFn, MaskGenerator, WindowedMask, build_mask_generator,
                         build_mask_generators, cube_count, cube_mask, draw_masks, num_masked, random_mask,
                         running_cell_mask, tube_mask, window_count, window_mask)
from .masks import Masks, SampleMasks

__all__ = ["MASK_COUNTS", "MASKINGS", "Grid", "MaskFn", "MaskGenerator", "Masks", "SampleMasks", "WindowedMask",
           "build_mask_generator", "build_mask_generators", "cube_count", "cube_mask", "draw_masks", "num_masked",
           "random_mask", "running_cell_mask", "tube_mask", "window_count", "window_mask"]
