"""The CLI verbs that are not a training task, one module each (``add_arguments(parser)``, ``run(args) -> exit
code``, ``HELP``), kept torch-free so that ``vmim <verb> --help`` and every refusal stay fast; :mod:`vmim.cli` only
wires them."""
