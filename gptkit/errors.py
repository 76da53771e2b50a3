"""Errors that are the user's to fix: the CLI prints them as one message and exits with code 2."""

import ast
import contextlib
import contextvars
import copyreg
import difflib
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator


def rebuilt(e: BaseException):
    """`__reduce__` for an exception whose __init__ takes other than its args (Refused's run_dir, problem
    and fix; PeerFailed's exit code): unpickled with its args and attributes as they were, without calling
    __init__ again. How an error in a worker (multiprocessing, joblib) reaches its parent."""
    return copyreg.__newobj__, (type(e), *e.args), e.__dict__


class UserError(Exception):
    """A mistake in a recipe, a file or a command line; never shown with a traceback."""

    exit_code = 2
    every_rank = False  # under torchrun, printed by every process: one that only its own process meets
    run_dir = None  # met in training, once the run folder exists: its last checkpoint resumes once it is fixed
    __reduce__ = rebuilt


class ComponentError(UserError):
    """A bug inside a registered component (its constructor, forward or other methods raised, or it
    returned what its kind may not), told as one line naming the component and where it comes from."""


class OutOfMemory(UserError):
    """Training or sampling needed more memory than its device has: the settings ask too much of it, or
    other programs hold it (exit code 2). The run's last checkpoint, if it has one, is intact."""


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` is the machine running out of memory, rather than code that merely says "allocate"."""
    import torch  # here, not above: `import gptkit` stays free of torch (see __init__.py and _entry.py)

    return isinstance(e, (MemoryError, torch.OutOfMemoryError)) or (  # CUDA's is torch.OutOfMemoryError
        isinstance(e, RuntimeError) and any(m in str(e) for m in CPU_OUT_OF_MEMORY))


def out_of_memory_on(e: BaseException, device) -> str:
    """The device `e` (out_of_memory) ran out on: `device` for torch's own OutOfMemoryError (an
    accelerator's), else the machine's memory ("cpu"), which a model on a GPU is loaded through."""
    import torch

    return str(device) if isinstance(e, torch.OutOfMemoryError) else "cpu"


@contextlib.contextmanager
def out_of_memory_as(error: Callable[[BaseException], BaseException]) -> Iterator[None]:
    """Within it, the machine running out of memory raises `error(e)` instead, without the traceback; any
    other exception passes."""
    try:
        yield
    except Exception as e:
        if not out_of_memory(e):
            raise
        raise error(e) from None


# What torch's CPU allocator says when the OS refuses memory (a RuntimeError, in torch 2.13): the first
# on Linux and macOS, the second on Windows.
CPU_OUT_OF_MEMORY = ("DefaultCPUAllocator: can't allocate memory", "DefaultCPUAllocator: not enough memory")


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'flash'?)' for the closest choice, or '': FLASH too, as letters' case aside."""
    choices = list(choices)
    by_lower = {c.lower(): c for c in reversed(choices)}  # (the first of two that differ only in case)
    close = [c for c in choices if c != word and c.lower() == word.lower()][:1] or \
        [by_lower[c] for c in difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)]
    return f" (did you mean '{close[0]}'?)" if close else ""


def counted(n: int, noun: str) -> str:
    """"1 step", "2 steps", "1,000 steps": a count with its noun."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


QUOTED_WIDTH = 80  # characters of a text an error quotes: a minified line or a 1 MB value is not quoted whole
FIX_WIDTH = 300  # characters of a value a fix to copy may hold: a fix is whole or not offered, never clipped


def clipped(text: str, at: int = 0, width: int = QUOTED_WIDTH) -> str:
    """`text`, or if it is longer than `width`, the `width` characters of it around index `at` (where the
    problem is; by default the start) with '…' standing for what is left out on either side."""
    if len(text) <= width:
        return text
    start = max(0, min(at - width // 2, len(text) - width))
    head = "…" if start else ""
    tail = "…" if start + width < len(text) else ""
    return head + text[start + len(head):start + width - len(tail)] + tail


def clipped_repr(value) -> str:
    """repr(value), clipped as `clipped` does; a string keeps its closing quote: 'xxxx…'."""
    return repr(clipped(value)) if isinstance(value, str) else clipped(repr(value))


def problems(origin: str, texts: list[str]) -> str:
    """One error for every problem of `origin`: the one alone, or 'ORIGIN has N problems:' and each on a line."""
    if len(texts) == 1:
        return texts[0]
    return f"{origin} has {len(texts)} problems:\n" + "\n".join(f"  {t.removeprefix(origin + ': ')}" for t in texts)


def a(noun: str) -> str:
    """'a norm', 'an attention'."""
    return f"{'an' if noun[:1] in tuple('aeiou') else 'a'} {noun}"


def listing(choices: Iterable[str]) -> str:
    choices = sorted(choices)
    return ", ".join(choices) if choices else "(none)"


class GptkitWarning(UserWarning):
    """What gptkit warns of: a `gptkit` command prints each as one line, `warning: MESSAGE`; from Python,
    filter them as any warning, e.g. `warnings.simplefilter("ignore", gptkit.GptkitWarning)`."""


def warn(message: str, category: type[Warning] = GptkitWarning) -> None:
    """warnings.warn(message), attributed to the first caller outside gptkit (a notebook's `train(...)` line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "gptkit":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


class RunStopped(BaseException):
    """Training stopped before its end. The run folder records why and keeps the last good checkpoint.
    `Interrupted` is also a KeyboardInterrupt, every other stop (`RunFailed`) an Exception: a notebook's
    sweep with `except Exception: continue` goes on past a diverged run, not past a Ctrl-C."""

    exit_code = 1
    status = "failed"
    run_dir = None  # set once the run folder exists
    resumable = True  # whether `gptkit run --resume` can take it on from its last checkpoint
    continue_with = None  # the command that goes on, when it is not `gptkit run --resume RUN_DIR`
    __reduce__ = rebuilt


class Interrupted(RunStopped, KeyboardInterrupt):
    """SIGINT or SIGTERM: a checkpoint was saved at a step boundary; the run can be resumed."""

    status = "interrupted"

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum  # the shell's convention: 130 for Ctrl-C, 143 for SIGTERM


class RunFailed(RunStopped, Exception):
    """A run that stopped on its own, not by a signal."""


class Diverged(RunFailed):
    """A non-finite loss or gradient norm, found where the step's figures are read (the next log line,
    evaluation or checkpoint): nothing from that step on is written or saved."""

    exit_code = 3
    resumable = False  # resumed as it was, it would diverge again; and train.lr may not change


class CheckpointError(RunFailed):
    """A checkpoint or another run file could not be written (disk full, permissions); the previous
    checkpoint, if there is one, is intact."""

    exit_code = 4


# How errors name what the caller gave: from Python (the default), the function's arguments; within a
# `gptkit` command (the CLI sets it for the whole command), its flags.
_command_line = contextvars.ContextVar("command_line", default=False)


@contextlib.contextmanager
def _setting(var: contextvars.ContextVar, value) -> Iterator[None]:
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def command_line() -> contextlib.AbstractContextManager[None]:
    """Within it, errors name the command line's flags (--runs-dir) rather than Python's arguments (runs_dir)."""
    return _setting(_command_line, True)


def on_command_line() -> bool:
    return _command_line.get()


# How a stopped run goes on, when it is not by resuming it (an ablation's run: by rerunning the ablation).
_goes_on = contextvars.ContextVar("goes_on", default=None)


def going_on_by(how: str) -> contextlib.AbstractContextManager[None]:
    """Within it, a failed save says to `how` ("rerun the same gptkit ablate command"), not to resume the run."""
    return _setting(_goes_on, how)


def goes_on_by() -> str | None:
    return _goes_on.get()


def arg(name: str) -> str:
    """An argument as the caller names it: '--runs-dir' on the command line, 'runs_dir' from Python."""
    return f"--{name.replace('_', '-')}" if on_command_line() else name


def given(name: str, value) -> str:
    """An argument with the value given: '--resume runs/x' on the command line, "resume='runs/x'" from Python."""
    return f"{arg(name)} {value}" if on_command_line() else f"{name}={str(value)!r}"


def override(text: str) -> str:
    """A recipe override as the caller gave it: '--set train.lr=1' on the command line, "overrides
    'train.lr=1'" (one of the list) from Python."""
    return f"--set {text}" if on_command_line() else f"overrides {text!r}"


def overridden(label: str) -> str | None:
    """The override that `override` names `label` from Python, as given; None for another label (--vary's,
    an argument such as data_path=, an ablation file's key). To give it back another way: quoted."""
    try:
        text = ast.literal_eval(label.removeprefix("overrides "))
    except (ValueError, SyntaxError):
        return None
    return text if isinstance(text, str) and override(text) == label else None


def overrides_example(*texts: str) -> str:
    """Overrides to give, as the caller would: '--set a=1 --set b=2', or "overrides=['a=1', 'b=2']"."""
    return " ".join(map(override, texts)) if on_command_line() else f"overrides={list(texts)!r}"


def first_line(text: object) -> str:
    """The first line of `text` (a message, an exception's), '' if it has none."""
    return (str(text).strip().splitlines() or [""])[0]


def one_line(e: BaseException) -> str:
    """'TypeName: the first line of its message' (or the type's name alone): an exception as one line
    of an error that names whose it was."""
    message = first_line(e)
    return f"{type(e).__name__}: {message}" if message else type(e).__name__


def failure_reason(e: BaseException) -> str:
    """The exception that ended a run as summary.json records it (an ablation reads it back to tell an
    arm's failure from its own)."""
    return f"{type(e).__name__}: {e}"
