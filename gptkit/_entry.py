"""The `gptkit` console script. The command line (and torch with it) is imported here, inside the
Ctrl-C handling, so that an interrupt in the first seconds ends as quietly as one later."""

import sys

from .ranks import first_on_machine


def main() -> None:
    try:
        from .cli import main as cli
    except KeyboardInterrupt:
        if first_on_machine():
            sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    cli(prog_name="gptkit")
