"""The `gptkit` command. Each subcommand lives in its own module of this package."""

import codecs
import contextlib
import errno
import io
import math
import os
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata

import click

from .. import plugins
from ..errors import GptkitWarning, RunStopped, UserError, command_line
from ..io import home_path, quote
from ..ranks import first_on_machine, rank, stray_world_size, under_torchrun, unset_by_torchrun


# Words other tools use for a command, which click's lookalike suggestions do not reach
SYNONYMS = {"components": "list", "ls": "list", "info": "show", "describe": "show", "train": "run",
            "generate": "sample", "ablation": "ablate", "benchmark": "bench", "diff": "compare", "conformance": "check"}
LOG_ONLY = ("run", "ablate")  # commands whose stdout is a log: their product is a folder


class Group(click.Group):
    """Turns a user's mistake into one message on stderr and exit code 2, a stopped run into its
    documented exit code, and a Ctrl-C outside training into 130. A reader that goes away (`| head`,
    a `tee` that dies) ends nothing: see `reader_may_go`."""

    def main(self, args=None, *rest, **kwargs):
        words = self.words = sys.argv[1:] if args is None else list(args)  # (self.words: for one_dash)
        # Under torchrun every process meets the same command line: help and version said once per machine.
        said = first_on_machine() or not any(w in ("-h", "--help", "--version") for w in words)
        with reader_may_go(), command_line(), one_line_warnings(), (contextlib.nullcontext() if said else silenced()):
            return super().main(args, *rest, **kwargs)  # errors name this command's flags, not Python's arguments

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.ClickException as e:  # in gptkit's own options: `gptkit --bogus run`
            raise said_once(e) from None

    def resolve_command(self, ctx, args):
        meant = SYNONYMS.get(args[0]) if args else None
        if meant and self.get_command(ctx, args[0]) is None:  # click suggests only lookalikes
            ctx.fail(f"No such command '{args[0]}'. Did you mean '{meant}'?")
        name, command, rest = super().resolve_command(ctx, args)
        if under_torchrun() and name != "run" and not any(a in ("-h", "--help") for a in rest):
            stray = stray_world_size(f"gptkit {name} runs in one process; unset WORLD_SIZE")
            if stray:
                raise stray
            raise UserError(f"gptkit {name} runs in one process; run it without torchrun (`gptkit run` alone trains "
                            "on several: torchrun ... -m gptkit run RECIPE)")  # each process would do it all, at once
        return name, command, rest

    def invoke(self, ctx):
        try:
            result = super().invoke(ctx)
            if ctx.invoked_subcommand not in LOG_ONLY:  # its output is its product: lost to a full disk, it failed
                with contextlib.suppress(OSError, ValueError):
                    sys.stdout.flush()  # (what is still buffered meets the full disk now)
                if stdout_full():
                    raise click.exceptions.Exit(1)
            return result
        except click.ClickException as e:  # in a command's options (an unknown one, a missing argument)
            if isinstance(e, click.NoSuchOption) and e.option_name in ("--import", "--imports") \
                    and ctx.invoked_subcommand in RECIPE_COMMANDS:  # (list, show and check take --import)
                e.message = (f"No such option: {e.option_name}. A recipe runs its local component files itself: add "
                             "them to its imports: list (--set 'imports=[...]' replaces that list)")
                e.possibilities = None  # (click's "Did you mean '--out'?")
            elif isinstance(e, click.NoSuchOption):
                one_dash(e, ctx, self.words)
            raise said_once(e) from None
        except UserError as e:
            if e.every_rank:  # met by this process alone (its GPU's memory): the others cannot say it
                click.echo(f"error{f' (rank {rank()})' if under_torchrun() and not unset_by_torchrun() else ''}: {e}",
                           err=True)
            elif first_on_machine():
                click.echo(f"error: {e}", err=True)
            if e.run_dir is not None and rank() == 0 and (e.run_dir / "checkpoint.pt").is_file():
                click.echo(f"Run folder: {e.run_dir}  (its last checkpoint is intact; once that is fixed, continue: "
                           f"{resume_command(e.run_dir)})", err=True)
            elif e.run_dir is not None and rank() == 0 and e.run_dir.is_dir():  # failed before its first save
                click.echo(f"Run folder: {e.run_dir}  (no checkpoint was saved yet; once that is fixed, "
                           f"{resume_command(e.run_dir)} starts it over)", err=True)
            ctx.exit(e.exit_code)
        except RunStopped as e:
            if rank() == 0:  # under torchrun, all stop at the same step: one says so
                click.echo(f"stopped: {e}", err=True)
            if e.run_dir is not None and e.run_dir.is_dir():  # (not one moved or deleted while it trained)
                # (an ablation goes on by its own command, whether or not this run is resumable)
                goes_on = e.continue_with or (e.resumable and (e.run_dir / "checkpoint.pt").is_file())
                again = e.continue_with or resume_command(e.run_dir)
                hint = f"  (continue: {again})" if goes_on else ""
                click.echo(f"Run folder: {e.run_dir}{hint}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the machine's, not the user's: a full disk, a vanished folder
            if e.errno == errno.ENAMETOOLONG:  # but a path given too long is the user's
                click.echo(f"error: a file name too long for the file system: {e.filename}; give a shorter path",
                           err=True)
                ctx.exit(2)
            click.echo(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:  # (torchrun passes a Ctrl-C on to every process)
            if first_on_machine():
                click.echo("\ninterrupted", err=True)
            ctx.exit(130)


def one_dash(e: click.NoSuchOption, ctx: click.Context, words: list[str]) -> None:
    """`-set` for `--set`: click reads it as the short options -s -e -t and names -s alone; said as the
    word given (of the command line's `words`), with the option meant."""
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    options = {o for p in (command.params if command else ()) for o in getattr(p, "opts", ())}
    meant = next((w for w in words if w.startswith(e.option_name) and not w.startswith("--")
                  and "-" + w.partition("=")[0] in options), None)
    if meant:
        word = meant.partition("=")[0]
        e.message = f"No such option: {word}. Did you mean -{word}?"
        e.possibilities = None


RECIPE_COMMANDS = ("run", "validate", "bench", "ablate")  # the commands that read a recipe, and take --set


def resume_command(run_dir) -> str:
    """The command that resumes `run_dir`: under torchrun, with torchrun's options as this job was started."""
    if under_torchrun():
        return f"torchrun ... -m gptkit run --resume {quote(run_dir)}"
    return f"gptkit run --resume {quote(run_dir)}"


def said_once(e: click.ClickException) -> Exception:
    """click's usage error `e`, to raise: said by the first process of a machine only (under torchrun every
    process meets the same command line), the others ending with its exit code in silence."""
    return e if first_on_machine() else click.exceptions.Exit(e.exit_code)


def finite(ctx, param, value):
    """A float option that is a number: click's FloatRange lets nan and inf through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number.")
    return value


def non_empty_path(ctx, param, value):
    """A path argument that is not empty: "" would be taken for the current folder."""
    if any(v is not None and not str(v).strip() for v in (value if isinstance(value, tuple) else (value,))):
        raise UserError(f"{param.human_readable_name} is empty; give a path")
    return value


def recipe_path(ctx, param, value):
    """A recipe argument (non_empty_path) that is not a folder: a run's or an ablation's, most likely, given
    where a recipe goes; said with the command meant."""
    value = non_empty_path(ctx, param, value)
    folder = None if value is None else home_path(value, f"recipe file {value}")  # as load_recipe says it
    if folder is None or not folder.is_dir():
        return value
    from ..training.folder import ablate_again, is_ablation_folder

    command = ctx.info_name
    hint = ""
    if is_ablation_folder(folder):
        hint = f"; to go on with that ablation: {ablate_again(folder)}"
    elif (folder / "recipe.yaml").is_file():
        hint = (f"; to continue that run: gptkit run --resume {quote(value)}" if command == "run" else
                f"; for that run's recipe: gptkit {command} {quote(folder / 'recipe.yaml')}")
    elif any(folder.glob("*.yaml")):
        hint = f"; give a recipe in it, e.g. {quote(min(folder.glob('*.yaml')))}"
    raise UserError(f"{value} is a folder, not a recipe file{hint}")


EXAMPLE_FOLDERS = {"--runs-dir": "runs", "--out": "runs/ablations/mine"}


def folder_option(ctx, param, value):
    """A folder option (--runs-dir, --out) with ~ expanded, as data.path's is (quoted, the shell leaves it
    to us); an empty one, which would scatter folders in the current folder, is refused."""
    name = param.opts[0]
    if value is None:
        return None
    if not value.strip():
        raise UserError(f"{name} is empty; give a folder, e.g. {name} {EXAMPLE_FOLDERS[name]}")
    return str(home_path(value, f"{name} {value}"))


_gone: dict[int, bool] = {}  # the file descriptors whose reader went away: whether their file was full instead


def stdout_dropped() -> bool:
    """Whether stdout's reader has gone away (`gptkit sample RUN | head -c 50`, and head exited), or the
    file it went to is full (see `stdout_full`): a command whose only product is its output (`gptkit
    sample`) may stop then."""
    return 1 in _gone


def stdout_full() -> bool:
    """Whether stdout went to a file on a full disk (said on stderr when met), not to a reader gone."""
    return _gone.get(1, False)


# A log file that cannot grow: like a reader gone, not a reason to stop training (its files may be elsewhere)
UNWRITABLE_LOG = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class _ReaderMayGo(io.FileIO):
    """The file descriptor of stdout or stderr, whose writes never fail because its reader went away: at
    the first broken pipe it is pointed at os.devnull (see Python's docs on SIGPIPE), so that this
    write and every later one succeed, as if read and thrown away; `stdout_dropped` says it happened. So
    does a full disk under the file it was redirected to (`gptkit run ... > log`), said once on stderr
    for stdout (where a command other than run and ablate then fails: its output was its product)."""

    def write(self, b) -> int:
        try:
            return super().write(b)
        except OSError as e:
            if not (isinstance(e, BrokenPipeError) or e.errno in UNWRITABLE_LOG):
                raise
            _to_devnull(self.fileno())
            _gone[self.fileno()] = not isinstance(e, BrokenPipeError)
            if self.fileno() == 1 and _gone[1]:  # (stdout is a command's product: a full stderr is not said there)
                with contextlib.suppress(OSError):
                    os.write(2, f"warning: cannot write to stdout ({e.strerror}): its output from here on is "
                                "dropped\n".encode())
            return memoryview(b).nbytes


def _to_devnull(fd: int) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def _pipe_safe(stream, original) -> io.TextIOWrapper | None:
    """`stream` (sys.stdout or sys.stderr) as the same kind of stream over a `_ReaderMayGo`; None where it
    is not the process's own over a plain file descriptor (a test's captured output, a Windows console)."""
    if stream is None or stream is not original or type(stream) is not io.TextIOWrapper:
        return None
    buffer = stream.buffer
    raw = buffer.raw if type(buffer) is io.BufferedWriter else buffer  # raw itself under python -u
    if type(raw) is not io.FileIO:
        return None
    safe = _ReaderMayGo(raw.fileno(), "wb", closefd=False)
    safe.name = raw.name  # "<stdout>"
    try:
        stream.flush()
    except BrokenPipeError:  # gone already: what it held goes where later writes will
        _to_devnull(raw.fileno())
        _gone[raw.fileno()] = False
        stream.flush()
    # An encoding without a character gptkit prints (cp1252 lacks the table's "Δ") escapes it, not raises.
    errors = stream.errors if codecs.lookup(stream.encoding).name == "utf-8" else "backslashreplace"
    return io.TextIOWrapper(io.BufferedWriter(safe) if buffer is not raw else safe, encoding=stream.encoding,
                            errors=errors, newline=None if os.name == "nt" else "\n",
                            line_buffering=stream.line_buffering, write_through=stream.write_through)


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Within it, each of gptkit's warnings is one line on stderr, `warning: MESSAGE`, every time it is
    warned (an ablation's runs may each warn the same); other warnings are shown as Python shows them."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", GptkitWarning)
        shown = warnings.showwarning

        def show(message, category, *rest, **kwargs):
            if issubclass(category, GptkitWarning):
                click.echo(f"warning: {message}", err=True)
            else:
                shown(message, category, *rest, **kwargs)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Within it, what is printed on stdout goes nowhere."""
    with open(os.devnull, "w") as void, contextlib.redirect_stdout(void):
        yield


@contextlib.contextmanager
def reader_may_go() -> Iterator[None]:
    """Within it, writing to stdout or stderr once its reader has gone (`gptkit run ... | head -2`, a
    `tee` that died) neither raises nor stops anything: a run trains on and finishes (its progress is in
    metrics.jsonl anyway), and any command ends as it would have, printing into the void (but
    `gptkit sample`, which asks `stdout_dropped`)."""
    swapped = {}
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # closed by the caller (2>&-): what it would say is thrown away
            swapped[name] = None
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (closed below)
            continue
        safe = _pipe_safe(getattr(sys, name), getattr(sys, f"__{name}__"))
        if safe is not None:
            swapped[name] = getattr(sys, name)
            setattr(sys, name, safe)
    try:
        yield
    finally:
        for name, original in swapped.items():
            with contextlib.suppress(OSError, ValueError):
                getattr(sys, name).flush()
                if original is None:
                    getattr(sys, name).close()
            setattr(sys, name, original)


def version() -> str:
    """gptkit's installed version; a source folder on PYTHONPATH has none (click's own lookup raises)."""
    try:
        return metadata.version("gptkit")
    except metadata.PackageNotFoundError:
        return "unknown: not installed (pip install -e . in its folder)"


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version(), prog_name="gptkit")
@click.option("--no-plugins", is_flag=True,
              help="Use built-in components only; ignore installed packages' (same as GPTKIT_NO_PLUGINS=1).")
def main(no_plugins):
    """Assemble GPTs from named components, train them from YAML recipes, and compare them."""
    if no_plugins:
        plugins.switch_off()


def imports_option(f):
    """--import FILE: a local component file, as a recipe's `imports:` names one."""

    def load(ctx, param, paths):
        for path in paths:
            plugins.import_file(home_path(path, f"--import {path}").absolute())
        return paths

    return click.option("--import", "imports", multiple=True, metavar="FILE.py", callback=load, expose_value=False,
                        help="Register the components of a local file first (as a recipe's imports). Repeatable.")(f)


def overrides_option(f):
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe field by dotted path, e.g. --set model.attention=naive. Repeatable.")(f)


from . import ablate, bench, check, compare, components, run, sample, validate  # noqa: E402,F401  (registers the subcommands)
