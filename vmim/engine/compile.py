"""``train.compile``: ``torch.compile`` of every transformer block, in place.

Regional compilation (each module of a ``blocks`` list, via ``nn.Module.compile``) rather than the whole model:
identical blocks share one compiled graph, so compiling costs about one block's worth (not the depth's), a graph
break in the method's Python (masks, token sets, targets) costs nothing, and parameter names and checkpoints stay
those of the eager model (``torch.compile(model)`` would prefix them with ``_orig_mod.``). Inputs of another shape
(images vs clips, another mask ratio) compile once more each. The first steps pay the compile time; tools/
bench_pretrain.py --compile measures it and the steady-state gain. Off by default: measured on a 2-core
AVX512-BF16 CPU, four VideoMAE decoder blocks ran ~12 % faster in fp32 but slower in bf16 after ~40 s of
compiling; on GPUs the gain is larger. Measure your own model before a long run.
"""

from __future__ import annotations

from torch import nn

from ..models.base import block_modules


def compile_blocks(model: nn.Module) -> int:
    """Compile, in place, every module of a ``blocks`` list in ``model`` (:func:`block_modules`); returns how many."""
    blocks = block_modules(model)
    for block in blocks:
        block.compile()
    return len(blocks)
