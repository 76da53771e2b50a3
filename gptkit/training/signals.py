"""SIGINT and SIGTERM while a run sets up its folder and trains (a stop at the next step boundary,
with a checkpoint) and after it (an Interrupted at once)."""

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING

from ..errors import Interrupted

if TYPE_CHECKING:
    from .trainer import Trainer


def stop_on_signals(trainer: "Trainer"):
    """While training (and setting up the run folder), SIGINT and SIGTERM only ask the trainer to stop
    at the next step boundary."""

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if not trainer.dist.is_main:  # under torchrun, rank 0 alone prints; the stop vote tells it
            trainer.stop_signal = trainer.stop_signal or signum
            return
        if trainer.stop_signal is None:
            trainer.stop_signal = signum
            note = f"\n{name}: stopping after this step and saving a checkpoint...\n"
        else:
            note = f"\n{name}: still saving; the checkpoint is written atomically, please wait.\n"
        with contextlib.suppress(OSError):  # stderr's reader gone: the stop goes ahead unannounced
            os.write(2, note.encode())  # not print(): a handler may interrupt a print in progress

    return _on_signals(handler)


def interrupt_on_signals(what: str):
    """After training, with nothing left to save: SIGINT and SIGTERM raise Interrupted at once (a
    SIGTERM would otherwise end the process before the run folder records why)."""

    def handler(signum, frame):
        raise Interrupted(signum, f"{signal.Signals(signum).name} received while {what}")

    return _on_signals(handler)


def interrupt_on_sigterm(what: str):
    """A SIGTERM raises Interrupted (exit code 143), as a Ctrl-C raises KeyboardInterrupt: what a command
    keeps on a Ctrl-C (the text sampled so far, the rounds benchmarked, the workers stopped) it keeps on a
    SIGTERM too, rather than ending at once."""

    def handler(signum, frame):
        raise Interrupted(signum, f"SIGTERM received while {what}")

    return _on_signals(handler, [signal.SIGTERM])


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM within it take effect at its end, as they would have (the handler then in place
    runs): the files written within it are written together."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    came = []
    previous = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in _heeded()}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for s in dict.fromkeys(came):
            signal.raise_signal(s)


def _heeded() -> list[signal.Signals]:
    """SIGINT and SIGTERM, but one this process was started ignoring: a shell starts a background job
    (`gptkit run ... &` in a script) ignoring SIGINT, so that a Ctrl-C at the terminal leaves it running."""
    return [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]


@contextlib.contextmanager
def _on_signals(handler, signals: list[signal.Signals] | None = None):
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, handler) for s in _heeded() if signals is None or s in signals}
    try:
        yield
    finally:
        for s, h in previous.items():
            # Only a handler still ours: one set inside the block stays (SIGTERM ignored once torchrun's job
            # lost a process, up to this process's exit: see distributed.lost).
            if signal.getsignal(s) is handler:
                signal.signal(s, h)
