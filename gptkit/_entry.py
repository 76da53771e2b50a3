"""The `gptkit` console script. The command line (and torch with it) is imported here, inside the
Ctrl-C handling, so that an interrupt in the first seconds ends as quietly as one later."""

import signal
import sys

from .ranks import first_on_machine, under_torchrun


def main() -> None:
    try:
        from .cli import main as cli

        cli(prog_name="gptkit")
    except KeyboardInterrupt as e:  # while importing, or while the command ends (a second Ctrl-C)
        _ignore_ctrl_c()
        chosen = e.__context__.code if isinstance(e.__context__, SystemExit) else None
        if isinstance(chosen, int):  # the command had said what it had to and chosen its exit code
            raise SystemExit(chosen) from None
        if first_on_machine():
            sys.stderr.write("\ninterrupted\n")
        raise SystemExit(130) from None
    finally:
        _ignore_ctrl_c()


def _ignore_ctrl_c() -> None:
    """The command is done, its output written and its exit code chosen: a Ctrl-C in the half second the
    interpreter takes to end (torch's exit handlers) would print a traceback or turn a finished run's
    exit code into 130. (Not under torchrun, whose processes may wait at exit for the others.)"""
    if not under_torchrun():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
