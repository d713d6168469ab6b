"""The CLI verbs that are not a training task, one module each (``add_arguments(parser)``, ``run(args) -> exit
code``, ``HELP``), kept torch-free so that ``vmim <verb> --help`` and every refusal stay fast; :mod:`vmim.cli` only
wires them."""

import argparse


def accept_intermixed(p: argparse.ArgumentParser) -> None:
    """Let RUN and the overrides come before and after the options (``vmim probe RUN --train A --test B
    probe.seeds=5``, ``vmim eval RUN --test A eval.num_views=2``): argparse's own pass takes the positionals it
    meets first and refuses later ones, so this parser reads them intermixed (``parse_known_intermixed_args``, which
    calls ``parse_known_args`` itself: the class's, while it runs). ``parse_intermixed_args`` on the whole CLI is
    not an option: argparse refuses it with subparsers."""
    def parse(args=None, namespace=None):
        del p.parse_known_args  # the class's method, for the two passes below
        try:
            return p.parse_known_intermixed_args(args, namespace)
        finally:
            p.parse_known_args = parse

    p.parse_known_args = parse
