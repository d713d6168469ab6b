"""``vmim convert``: its arguments (:func:`add_arguments`) and its command (:func:`convert_command`).

Torch-free when imported: :mod:`vmim.cli` builds its parser from here and refuses an unsafe, empty or random source
(:func:`vmim.safe_load.peek`) before :func:`convert_command` imports the converters.
"""

from __future__ import annotations

import argparse
import sys

from . import FORMATS


def int_list(text: str) -> list[int]:
    """'1,3' -> [1, 3]; '' -> []."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not comma-separated block indices (e.g. 1,3)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--from FORMAT SRC DST`` and the options of :func:`vmim.convert.dispatch.convert_checkpoint`."""
    parser.add_argument("--from", dest="source_format", required=True, choices=tuple(FORMATS),
                        help="the source's layout")
    parser.add_argument("src", help="reference checkpoint (.pth / .pt / .pyth)")
    parser.add_argument("dst", help="output file (for fine-tuning init= or load_backbone)")
    parser.add_argument("--num-frames", type=int, default=None,
                        help="clip frames of the result (the grid of a learned position table; for a saved 3-D "
                             "table, the frames it was made for); default 16 (slowfast: the checkpoint's cfg, else "
                             "the size's)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="crop side; default: the position table's, else 224; a learned table is interpolated")
    parser.add_argument("--tubelet-size", type=int, default=None,
                        help="frames per token; default: the source's, or 2 for 2-D weights (inflated: repeated "
                             "over t, divided by t)")
    parser.add_argument("--backbone", default=None, help="expected registered size (vit_base, mvitv2_s_16x4, ...)")
    parser.add_argument("--q-pool-blocks", type=int_list, default=None, metavar="I,J,...",
                        help="slowfast: blocks whose q is pooled (MaskFeat pre-training of MViT-S: 1,3); default: "
                             "the checkpoint's cfg, else read from the relative-position tables")


def convert_command(args: argparse.Namespace) -> int:
    """``vmim convert``: convert, print one summary line; 2 on a bad checkpoint, with the reason."""
    from .dispatch import convert_file, summary_line  # torch: only once the command runs (module docstring)

    try:
        converted = convert_file(args.source_format, args.src, args.dst, num_frames=args.num_frames,
                                 img_size=args.img_size, tubelet_size=args.tubelet_size, backbone=args.backbone,
                                 q_pool_blocks=getattr(args, "q_pool_blocks", None))
    except FileNotFoundError as err:
        print(f"vmim convert: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # InputError, UnsafeFileError, and the conversion's own (keys that do not fit)
        print(f"vmim convert: {err}", file=sys.stderr)
        return 2
    print(summary_line(converted, args.dst))
    return 0


__all__ = ["add_arguments", "convert_command", "int_list"]
