"""``python -m vmim`` is the ``vmim`` command."""

import sys

from .cli import main

sys.exit(main())
