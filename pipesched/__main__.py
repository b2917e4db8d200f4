"""``python -m pipesched`` runs the command line."""

import sys

from .cli import console

__all__: list[str] = []

sys.exit(console())
