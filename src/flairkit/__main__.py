"""Entry point of the ``flairkit`` command and of ``python -m flairkit``.

It imports the command line inside a guard: a Ctrl-C while Python is still importing (before
``cli.main`` runs and handles it) prints one line and exits 130, like one during a command.
"""

from __future__ import annotations

import sys


def run() -> int:
    """Import and run the command line; 130 on Ctrl-C during the import."""
    try:
        from flairkit.cli import main
    except KeyboardInterrupt:
        print("flairkit: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
