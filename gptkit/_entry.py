"""The `gptkit` console script. The command line (and torch with it) is imported here, inside the
Ctrl-C handling, so that an interrupt in the first seconds ends as quietly as one later."""

import sys


def main() -> None:
    try:
        from .cli import main as cli
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    cli(prog_name="gptkit")
