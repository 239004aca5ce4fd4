"""``python -m labkit`` is the ``labkit`` command."""

import sys

try:
    from .cli import program
except KeyboardInterrupt:  # Ctrl-C while Python is still importing the CLI
    print("labkit: interrupted", file=sys.stderr)
    sys.exit(130)

program()
