"""The `gptkit` console script. The command line (and torch with it) is imported here, inside the
Ctrl-C handling, so that an interrupt in the first seconds ends as quietly as one later."""

import signal
import sys

from .ranks import first_on_machine, under_torchrun


def main() -> None:
    try:
        from .cli import main as cli
    except KeyboardInterrupt:
        if first_on_machine():
            sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    try:
        cli(prog_name="gptkit")
    finally:
        # The command is done, its output written and its exit code chosen: a Ctrl-C in the half second the
        # interpreter takes to end (torch's exit handlers) would print a traceback or turn a finished run's
        # exit code into 130. (Not under torchrun, whose processes may wait at exit for the others.)
        if not under_torchrun():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
