"""One training run from a recipe: data, model, run folder, training, checkpoint, sample, summary.

A run folder always holds `summary.json` whose `status` is running, finished, interrupted or
failed. Runs are resumed from their last checkpoint with `resume=`.
"""

import errno
import functools
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import torch

from ..data.dataset import CharDataset, cannot_create, corpus_text, dataset_of, load_dataset, will_create
from ..device import keep_random_state, resolve_device, torch_defaults
from ..diagnose import blaming, check_forward
from ..errors import (CheckpointError, ComponentError, Diverged, GptkitWarning, Interrupted, OutOfMemory, RunStopped,
                      UserError, arg, failure_reason, given, goes_on_by, on_command_line, out_of_memory, out_of_memory_as,
                      out_of_memory_on, overrides_example, warn)
from ..io import (DISK_FULL, cannot_make_folder, check_path_argument, home_path, make_folders, quote, remove_empty,
                  write_json, write_text)
from ..model import GPT, check_components
from ..plugins import software
from ..recipe import Recipe, validate, yaml
from ..recipe.load import flatten
from ..sampling import sample
from . import distributed
from .build import build_checked, every_rank
from .checkpoint import load_checkpoint, load_weights, plugin_changes, save_checkpoint
from .folder import earlier_sessions, summary_of
from .resume import (RunBusy, busy, check_restartable, check_resumable, check_run_dir, check_unchanged,
                     find_resumable, is_locked, lock_run, process_differences, remove_leftovers, saved,
                     settings_changed, truncate_metrics)
from .signals import interrupt_on_signals, signals_held, stop_on_signals
from .trainer import Trainer, trained_toward


@dataclass
class RunResult:
    """What `train` returns: the trained `model` (in evaluation mode), the `dataset` it trained on
    (`dataset.vocab`; `dataset.train`/`dataset.val` hold token ids), the `run_dir` and its `summary`
    (the figures of summary.json)."""

    model: GPT
    dataset: CharDataset
    run_dir: Path | None  # None on every process of a torchrun job but rank 0
    summary: dict

    def __repr__(self) -> str:  # not the model's every module
        figures = [f"{k}={self.summary[k]!r}" for k in ("status", "steps", "final_val_loss") if k in self.summary]
        return ", ".join([f"RunResult(run_dir={str(self.run_dir) if self.run_dir else None!r}", *figures,
                          f"model=<GPT of {self.model.num_params():,} parameters>", f"dataset={self.dataset!r})"])


def other_runs_dir(folder: str) -> str:
    """'pass --runs-dir with FOLDER' on the command line, 'pass FOLDER as runs_dir' from Python."""
    return f"pass --runs-dir with {folder}" if on_command_line() else f"pass {folder} as runs_dir"


def free_space() -> str:
    return f"free some space, or {other_runs_dir('a folder on another disk')}"


def remedy(e: Exception) -> str:
    """What to do about a write that failed in a run folder (by an OSError's errno): "free some space"."""
    if out_of_memory(e):
        return "free some memory (close other programs)"
    if e.errno in DISK_FULL:
        return "free some space"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "make the run folder writable"
    return "check the disk"


def then_resume(e: Exception, run_dir: Path) -> str:
    """The end of a failed save's message: ". Free some space and resume with --resume" (the command line
    says the whole command next), or from Python "... with resume='RUN_DIR'"; an ablation's run, how the
    ablation goes on (`going_on_by`)."""
    if goes_on_by():
        return f". {remedy(e).capitalize()} and {goes_on_by()}"
    again = "--resume" if on_command_line() else given("resume", run_dir)
    return f". {remedy(e).capitalize()} and resume with {again}"


def runs_dir_blocked(runs_dir: Path) -> UserError | None:
    """The error for a `runs_dir` no run folder can be made in, as far as can be seen without making one."""
    blocked = cannot_make_folder(runs_dir)  # a link that leads nowhere would pass for a name taken
    if blocked:
        return UserError(f"cannot create a run folder in {runs_dir}: {blocked}; {other_runs_dir('a writable folder')}")
    return None


def new_run_dir(runs_dir: Path, name: str) -> tuple[Path, list[Path]]:
    """A new folder NAME-STAMP in `runs_dir`, and the folders made for it (`make_folders`)."""
    blocked = runs_dir_blocked(runs_dir)
    if blocked:
        raise blocked
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = runs_dir / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            return path, make_folders(path, exist_ok=False)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in DISK_FULL:  # a failed save, as one later in the run would be
                raise CheckpointError(f"cannot create a run folder in {runs_dir}: {e.strerror}; "
                                      f"{free_space()}") from None
            raise UserError(f"cannot create a run folder in {runs_dir}: {e.strerror}; "
                            f"{other_runs_dir('a writable folder')}") from None
    raise UserError(f"too many runs named {name} in {runs_dir} this second")


def make_run_dir(path: Path) -> tuple[Path, list[Path]]:
    """The run folder `path` (an ablation's), and the folders made for it (`make_folders`)."""
    try:
        return path, make_folders(path)
    except OSError as e:
        raise UserError(f"cannot create the run folder {path}: {e.strerror}") from None


def train(recipe: Recipe, runs_dir: str | Path = "runs", *, quiet: bool = False,
          resume: str | Path | None = None, run_dir: str | Path | None = None) -> RunResult:
    """Train the model `recipe` describes; everything the run produces lands in a run folder: a new
    one under `runs_dir`, or `run_dir` when given (created if missing; an ablation names its runs).

    `resume` continues a run folder from its last checkpoint (or starts over one stopped before its
    first); "auto" picks the newest run of this recipe in `runs_dir` that has a checkpoint, is neither
    finished nor diverged, is not being trained by another process, and could be resumed (its recipe
    differs only where it may change, its text is the same, it has not trained past the budget), or
    starts a new run.

    Training seeds torch's global random generators with `recipe.seed`; the caller's random state is
    put back afterwards, so that a notebook's later draws do not depend on having trained. It runs under
    torch's own defaults (see `torch_defaults`), whatever the caller set.
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"train takes a Recipe, got {type(recipe).__name__}: train(load_recipe(path))")
    check_arguments(runs_dir, quiet, resume, run_dir)
    runs_dir = home_path(runs_dir, given("runs_dir", runs_dir))  # ~/runs, as a recipe's paths may say
    run_dir = None if run_dir is None else home_path(run_dir, given("run_dir", run_dir))
    resume = resume if resume in (None, "auto") else home_path(resume, given("resume", resume))
    # Validated again as load_recipe validates a file: an assignment pydantic checks only for its type
    # (recipe.imports = [a file that is not there]) would otherwise train a run no command can read back.
    recipe = validate(recipe.to_dict(), origin=f"recipe {recipe.name}")
    try:
        with torch_defaults():
            dist, device = distributed.setup(resolve_device(recipe.train.device))  # one process unless under torchrun
            # The set-up's collectives (training's are the trainer's): a process gone is one message, not a traceback.
            with keep_random_state(device), dist.needing_peers("before training started"):
                try:
                    return _train(recipe, dist, device, runs_dir, quiet, resume, run_dir)
                except RunBusy:
                    if resume != "auto" or dist.world_size > 1:
                        raise
                # Another process took the run auto chose, between choosing and locking it (two started at
                # once): choose again, which passes that run by as one being trained.
                return _train(recipe, dist, device, runs_dir, quiet, resume, run_dir)
    except RunStopped as e:
        if not (on_command_line() or goes_on_by()) and e.run_dir is not None and e.resumable and e.continue_with is None \
                and (e.run_dir / "checkpoint.pt").is_file():  # the command line's "(continue: ...)", from Python
            folder = str(e.run_dir)
            e.args = (f"{e} (go on with train(load_recipe({str(e.run_dir / 'recipe.yaml')!r}), resume={folder!r}))",
                      *e.args[1:])
        raise


def check_arguments(runs_dir, quiet, resume, run_dir) -> None:
    """`train`'s options: of their types, and folders not at odds (a resumed run stays in its folder,
    and a new run does not overwrite one)."""
    if not isinstance(quiet, bool):  # quiet="no" would be taken as True
        raise TypeError(f"quiet must be True or False, got {quiet!r}")
    for name, value in (("runs_dir", runs_dir), ("resume", resume), ("run_dir", run_dir)):
        check_path_argument(name, value, optional=name != "runs_dir")
    if run_dir is None:
        return
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise UserError(f"run_dir={str(run_dir)!r} is a file, not a folder; give a folder for the run")
    if resume is not None and (resume == "auto" or Path(resume).absolute() != Path(run_dir).absolute()):
        raise UserError(f"resume={str(resume)!r} and run_dir={str(run_dir)!r}: a resumed run goes on in its own "
                        "folder; give one of them")
    if resume is None and any((Path(run_dir) / name).exists() for name in ("recipe.yaml", "checkpoint.pt")):
        raise UserError(f"run_dir={str(run_dir)!r} holds a run already; resume it with resume={str(run_dir)!r}, "
                        "or give another folder")


def check_data(recipe: Recipe) -> bool:
    """The data checks `train` makes before training (load_dataset, then check_run), for `gptkit validate`,
    which writes nothing: a data.path that data.corpus would create on the first run is not created, but
    the corpus's text is made and checked in memory (what the first run would meet making it, such as a
    package the corpus needs, is met now). Returns whether that was the case."""
    data, later = recipe.data, will_create(recipe.data)
    if later:
        why = cannot_make_folder(data.path.parent)
        if why:
            raise cannot_create(data.path, data.corpus, why)
        dataset = dataset_of(corpus_text(data.corpus), data, recipe.model.block_size, f"the '{data.corpus.name}' corpus")
    else:
        dataset = load_dataset(data, recipe.model.block_size)  # creates nothing: the path exists, or no corpus
    check_fits(recipe, dataset, recipe.sample.prompt)
    return later


def check_fits(recipe: Recipe, dataset: CharDataset, prompt: str | None) -> None:
    """The batch fits the text, `prompt` (None: nothing is sampled) is in its vocabulary, and the model's
    components accept its vocabulary size (as building the model will check)."""
    dataset.check_run(recipe.train.batch_size, prompt)
    check_components(recipe.model, recipe.model.config(dataset.vocab_size))


def _train(recipe: Recipe, dist: distributed.Distributed, device: torch.device, runs_dir: str | Path, quiet: bool,
           resume: str | Path | None, run_dir: str | Path | None) -> RunResult:
    """`train` on `device`, as the process `dist` of its job."""
    log = (lambda *a: None) if quiet or not dist.is_main else print
    # Even when quiet: notes on stderr, warnings as GptkitWarnings (one line each on the command line).
    note = (lambda *a: None) if not dist.is_main else functools.partial(print, file=sys.stderr)
    warn_once = (lambda *a: None) if not dist.is_main else warn  # rank 0 says it for the job
    # Every rank runs its own command: a --set on one machine's and not another's would train on other settings
    # (but for those a machine may set its own way: the text is compared by its SHA-256 below).
    apart = dist.every_rank_if_apart(flatten(recipe.to_dict()))
    if apart is not None and process_differences(apart):
        raise UserError(f"the {dist.world_size} processes disagree on the recipe: {process_differences(apart)}; every "
                        "process must run the same recipe with the same --set")
    if resume is None:  # (a resumed run's batch may not change: said first, by the checks of what may)
        dist.check_batch_size(recipe.train.batch_size)
    # A resumed run's recipe.yaml names its text by an absolute path: no relative one to explain, and the same
    # text may be read from elsewhere (data.path may change; the text's SHA-256 is checked).
    elsewhere = f", e.g. {overrides_example('data.path=FILE')}" if on_command_line() else " (the recipe's data.path)"
    missing = None if resume in (None, "auto") else (
        f"; restore it, or point data.path at a copy of the text {resume} was trained on{elsewhere}")
    # Said before the text is read, or a corpus file made for a run that cannot start.
    if resume not in (None, "auto"):
        check_run_dir(resume)
    elif resume is None and run_dir is None:  # a new run folder will be made, by rank 0
        blocked = runs_dir_blocked(Path(runs_dir)) if dist.is_main else None
        if blocked:
            dist.abort(blocked.exit_code)  # the other ranks, at the vote below, stop quietly
            raise blocked
        dist.any_rank(False)
    with dist.local_main_first():  # a corpus file is created once per machine
        dataset = load_dataset(recipe.data, recipe.model.block_size, missing,
                               check=lambda d: d.check_run(recipe.train.batch_size, recipe.sample.prompt))
    dist.check_same("the training text", dataset.fingerprint,
                    "every machine needs the same file at data.path")
    checkpoint = save = None
    if resume is not None:
        run_dir, checkpoint, save = run_to_resume(recipe, dataset, resume, Path(runs_dir), log, note, warn_once)
        dist.check_batch_size(recipe.train.batch_size, resuming=checkpoint is not None)
    # By its folder's name too: `--resume auto` is chosen by each process, and two runs may be at one step.
    resumed = "" if checkpoint is None else f"{run_dir.name} at step {checkpoint['step']}"
    chosen = f", and {given('resume', 'auto')} may choose another run on each: name the run to resume" \
        if resume == "auto" else ""
    dist.check_same("the run to resume and its step", resumed,
                    f"{arg('resume')} needs the run folder on a file system every machine sees{chosen}")

    # Said once the run folder is made: not before a refusal to make it (--runs-dir /proc/x).
    to_warn = []
    model, cache_warning = build_checked(recipe, dataset.vocab_size, device)  # before there is a run folder
    if cache_warning:  # a key/value cache that does not match a full pass: the model samples without it from now on
        to_warn.append(cache_warning)
    with out_of_memory_as(lambda e: every_rank(OutOfMemory(
            f"out of memory on {out_of_memory_on(e, device)} taking the text{' and the checkpoint' if checkpoint else ''} "
            "onto it, before training; free some memory (close other programs that use it) and try again"))):
        dataset.to(device)
        if checkpoint is not None:
            load_weights(model, checkpoint, run_dir / "checkpoint.pt",
                         plugin_changes(checkpoint.get("plugins"), recipe, prefix="model."))
        trainer = Trainer(recipe, model, dataset, device, quiet=quiet or not dist.is_main, dist=dist)
        if checkpoint is not None:  # the optimizer's state, twice the weights' size with AdamW, onto the device
            trainer.load_state_dict(checkpoint["trainer"], checkpoint["recipe"])  # rank 0's random stream too
    # (At the budget, a resumed run only saves new sample settings.)
    if checkpoint is not None and checkpoint["step"] > trainer.total_steps:
        raise UserError(f"{run_dir} has trained {checkpoint['step']:,} steps, past this recipe's budget of "
                        f"{trainer.total_steps:,}; resume it with a budget of at least {checkpoint['step']:,} "
                        "steps (train.epochs, and train.max_steps if set)")
    to_warn += training_warnings(recipe, trainer, checkpoint, dist.is_main)  # every rank: a schedule may raise
    if not dist.is_main:  # other ranks only train; rank 0 prints and writes the run folder
        try:
            # From before the wait for rank 0's folder, which rank 0 sets up under its own handler: a signal
            # meanwhile is a stop request that every rank agrees on at the first step's vote, with a checkpoint,
            # not this rank's death (SIGTERM) or KeyboardInterrupt (SIGINT) alone.
            with stop_on_signals(trainer):
                dist.any_rank(False)  # waits for rank 0's run folder: PeerFailed if it could not set it up
                trainer.fit()  # PeerFailed at a stop vote if rank 0 could not write a checkpoint or metrics
        except (distributed.PeerFailed, Diverged):  # rank 0 says why (and records a divergence): let it end first
            dist.outlive()  # here, out of fit: its SIGTERM handler would make torchrun's stop of this rank a note
            raise
        except UserError as e:  # a plugin's bug: said by rank 0, unless it was met in this rank's share alone
            e.every_rank = dist.fails_alone(trainer.state.step)
            raise
        return RunResult(model.eval(), dataset, None, {})
    ready = False

    def say_warnings() -> None:
        for w in to_warn:
            warn_once(w)

    def locked() -> None:  # the run folder is this process's now
        if resume is not None and run_dir is not None:  # (None: auto found none to resume)
            check_unchanged(run_dir, save)

    def start() -> None:  # the run folder is set up: the other ranks, waiting for this vote, train too
        nonlocal ready
        ready = True
        with dist.needing_peers("before training started"):  # said and recorded as a stop, not as gloo's error
            dist.any_rank(False)

    try:
        # From before the folder is made: a Ctrl-C while it is set up stops the run at its first step
        # boundary, with a checkpoint, instead of leaving a folder that is neither a run nor removed.
        with stop_on_signals(trainer):
            return _train_main(recipe, trainer, dataset, checkpoint, runs_dir, run_dir, quiet, log, start,
                               say_warnings, locked)
    except BaseException as e:
        if not ready:  # rank 0's alone: the others, waiting, stop quietly rather than meet its closed connection
            dist.abort(getattr(e, "exit_code", 1))
        raise


Resumed = tuple[Path | None, dict | None, tuple | None]


def training_warnings(recipe: Recipe, trainer: Trainer, checkpoint: dict | None, is_main: bool) -> list[str]:
    """What is said before training, even when quiet: a plugin optimizer's departures from the update rule
    its name implies (checked by rank 0, `is_main`), a schedule that never reaches train.lr, and a resumed
    run's schedule stretched to another budget."""
    said = []
    if is_main and not recipe.train.optimizer.built_in:  # trains all the same; a resumed run then differs
        from ..conformance import optimizer_warnings  # (conformance builds on training's modules; only for a plugin's)

        said += optimizer_warnings(recipe.train.optimizer, recipe.train.weight_decay)
    schedule = trainer.schedule_warning()
    if schedule and not goes_on_by():  # (an ablation says it once, in its plan)
        said.append(schedule)
    stretched = checkpoint and trainer.restretch_warning(checkpoint["recipe"])
    if stretched:  # (as a plugin's change is: an ablation never resumes with another budget)
        said.append(stretched)
    return said


def run_to_resume(recipe: Recipe, dataset: CharDataset, resume: str | Path, runs_dir: Path,
                  log: Callable[[str], None], note: Callable[[str], None], warn_once: Callable[[str], None]) -> Resumed:
    """The run folder `resume` names (or "auto" finds), its checkpoint loaded (None for a run stopped before
    its first) and which save that is, once checked that `recipe` and its text can go on with it; or three
    Nones when auto finds no run to resume. Settings the run goes on with that it did not train with are
    noted (settings_changed)."""
    checkpoint = save = None
    if resume == "auto":  # a run it passes by is named, and why: another process trains it, another recipe...
        run_dir, checkpoint, save = find_resumable(runs_dir, recipe, dataset, log, note) or (None,) * 3
        if run_dir is None:
            return None, None, None
    else:
        run_dir = Path(resume)  # (checked by _train before the text was read)
    if is_locked(run_dir):  # said first: nothing else about a folder another process is changing holds
        raise busy(run_dir)
    if checkpoint is None and (run_dir / "checkpoint.pt").exists():  # (auto's choice is loaded already)
        save = saved(run_dir)
        checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    if checkpoint is not None:
        check_resumable(run_dir, checkpoint, recipe, dataset, warn_once)
        changed = settings_changed(checkpoint, run_dir, recipe)
        if changed:
            note(f"note: resuming {run_dir} with settings other than those it trained with:\n"
                 + "\n".join(f"  {how}" for how in changed))
    else:  # stopped before its first checkpoint: nothing to continue from, so it starts over
        check_restartable(run_dir, recipe)
        log(f"{run_dir} has no checkpoint yet: starting it over")
    return run_dir, checkpoint, save


def _train_main(recipe: Recipe, trainer: Trainer, dataset: CharDataset, checkpoint: dict | None,
                runs_dir: str | Path, run_dir: str | Path | None, quiet: bool, log: Callable[[str], None],
                start: Callable[[], None], say_warnings: Callable[[], None], locked: Callable[[], None]) -> RunResult:
    """Rank 0's part of `_train`: the run folder, made or resumed, around `train_in`; `locked()` once it
    holds the folder's lock."""
    made = []  # the folders made for this run: none for one that exists (an ablation's run, restarted)
    if checkpoint is None:  # the folder is made only once every input has been checked
        run_dir, made = new_run_dir(Path(runs_dir), recipe.name) if run_dir is None else make_run_dir(Path(run_dir))
    try:
        say_warnings()  # (a GptkitWarning raised by a caller's "error" filter: nothing is trained)
        with lock_run(run_dir):
            locked()
            return train_in(run_dir, recipe, trainer, dataset, checkpoint, log, start)
    except (OSError, ComponentError, OutOfMemory, GptkitWarning) as e:
        # A folder with nothing of the run is not left behind: a full disk before summary.json, or a
        # component's bug (its schedule's factor(0), say) or too little memory met before the first step.
        nothing = not (run_dir / "summary.json").exists() if isinstance(e, OSError) else trainer.state.step == 0
        if made and nothing:
            shutil.rmtree(run_dir, ignore_errors=True)
            remove_empty(made[1:])  # and the folders above it made for it
            if isinstance(e, OSError):  # a save that failed before anything was made: said as one, exit code 4
                fix = free_space() if e.errno in DISK_FULL else other_runs_dir("a writable folder")
                raise CheckpointError(f"could not write {Path(e.filename or run_dir).name} in the new run folder "
                                      f"{run_dir}: {e.strerror or e}; nothing was trained and the folder is "
                                      f"removed: {fix}") from None
            if not quiet:  # its "Run folder:" line is stale
                raise type(e)(f"{e}\n(nothing was trained: {run_dir} is removed)") from e
        if isinstance(e, OSError) and checkpoint is not None and trainer.state.step == checkpoint["step"]:
            raise UserError(f"cannot resume {run_dir}: {e.strerror or e}{f': {e.filename}' if e.filename else ''}; "
                            f"nothing was trained: {remedy(e)} and try again") from None
        raise


def train_in(run_dir: Path, recipe: Recipe, trainer: Trainer, dataset: CharDataset, checkpoint: dict | None,
             log: Callable[[str], None], start: Callable[[], None]) -> RunResult:
    """Rank 0's part of `train`: the run folder's files around `trainer.fit()`; `start()` once they are
    set up, before training."""
    model, device = trainer.model, trainer.device
    remove_leftovers(run_dir)  # of a save that was killed midway
    if checkpoint is not None:
        truncate_metrics(run_dir / "metrics.jsonl", checkpoint["step"], checkpoint["trainer"]["state"]["eval_pending"])
        log(resuming(run_dir, checkpoint, trainer))
    else:
        log(f"Run folder: {run_dir}")
    write_text(run_dir / "recipe.yaml", yaml.dump(recipe.to_dict()))  # read back by --resume: quoted so that it reads the same
    log(f"{model.num_params():,} parameters on {device} ({trainer.describe()}); {dataset.describe()}")
    if checkpoint is None:  # (a resumed run's first line says where it goes from, and to)
        log(trainer.budget())

    # Unbuffered: a full disk fails the write that hit it, not a later flush or the file's closing.
    with open(run_dir / "metrics.jsonl", "ab" if checkpoint else "wb", buffering=0) as metrics:
        def alone(e: UserError) -> UserError:
            # This rank's failure alone, in training: the others, on their way to the next stop vote, learn of it
            # there and stop quietly. Not once the vote said stop: they are stopping already, with no vote to come.
            if not trainer.stopping:
                trainer.dist.abort(e.exit_code)
            return e

        def on_metrics(record: dict) -> None:
            try:
                metrics.write((json.dumps(record) + "\n").encode("utf-8"))
            except OSError as e:
                raise alone(CheckpointError(f"could not write metrics.jsonl in {run_dir}: {e.strerror or e}; "
                                            f"{kept(run_dir)}{then_resume(e, run_dir)}")) from None

        def on_checkpoint(trainer: Trainer) -> None:
            try:
                save(run_dir, trainer, recipe, dataset, metrics)
            except (CheckpointError, ComponentError) as e:  # a full disk, or an optimizer state no checkpoint may hold
                raise alone(e) from None

        trainer.on_metrics, trainer.on_checkpoint = on_metrics, on_checkpoint
        write_summary(run_dir, recipe, trainer, "running")
        try:
            start()
            trainer.fit()
            # No step boundary left to stop at: a signal from here on stops the run at once (resumable).
            with interrupt_on_signals("saving, after training finished; resume the run to write samples.txt"):
                if checkpoint is not None and trainer.state.step == checkpoint["step"]:
                    save(run_dir, trainer, recipe, dataset, metrics)  # no step to save, but the sample settings may be new
            sp, cut = recipe.sample, None
            if sp.tokens:  # sample.tokens 0: no sample, and no samples.txt
                with interrupt_on_signals("sampling, after training finished"):
                    try:
                        cut = write_sample(run_dir, recipe, trainer, dataset, log)
                    except Interrupted as e:  # between the parts it stops itself in: the run is trained all the same
                        cut = Interrupted(e.signum, f"{e}: the run is finished and saved")
            elif (run_dir / "samples.txt").exists():  # made by an earlier session: not of these settings
                (run_dir / "samples.txt").unlink()
                log("No sample (sample.tokens is 0): the samples.txt an earlier session made is removed")
        except RunStopped as e:
            record_failure(run_dir, recipe, trainer, e.status, str(e), e.resumable)
            e.run_dir = run_dir
            raise
        except BaseException as e:
            if isinstance(e, UserError):
                trainer.dist.failed_in_training(trainer.state.step)
                e.run_dir = run_dir
            record_failure(run_dir, recipe, trainer, "failed", failure_reason(e))
            raise
    try:
        summary = write_summary(run_dir, recipe, trainer, "finished", resumable=False)
    except OSError as e:  # a full disk at the very end: summary.json still says running, as of the last save
        failed = gone(run_dir) or CheckpointError(
            f"could not write summary.json in {run_dir}: {e.strerror or e}; the run is trained and its checkpoint "
            f"saved (resuming it records it as finished, with nothing to train){then_resume(e, run_dir)}")
        failed.run_dir = run_dir
        raise failed from None
    if cut is not None:  # a Ctrl-C cut the sample short, not the run: finished, and said so, with the signal's exit code
        cut.run_dir, cut.resumable = run_dir, False
        raise cut
    return RunResult(model.eval(), dataset, run_dir, summary)  # ready to generate: no dropout


def resuming(run_dir: Path, checkpoint: dict, trainer: Trainer) -> str:
    """The opening line of a resumed run: where it goes from, and to, and a budget that is not the one it
    trained toward (a recipe given again without the --set that shortened it trains on for longer)."""
    step, total = checkpoint["step"], trainer.total_steps
    if step == total:
        train = trainer.recipe.train
        limit = "train.max_steps" if train.max_steps is not None and train.max_steps <= total else "train.epochs"
        sample = "made again" if trainer.recipe.sample.tokens else "not made (sample.tokens is 0)"
        return (f"{run_dir} has taken all {total:,} steps of its budget: nothing to train (raise {limit} to train "
                f"on); its sample settings are saved and its sample {sample}")
    toward = trained_toward(checkpoint["recipe"], trainer.steps_per_epoch)
    changed = "" if toward in (None, total) else f" (it trained toward {toward:,} steps; the recipe now says {total:,})"
    return f"Resuming {run_dir} from step {step:,} of {total:,}{changed}"


def write_sample(run_dir: Path, recipe: Recipe, trainer: Trainer, dataset: CharDataset,
                 log: Callable[[str], None]) -> Interrupted | None:
    """samples.txt: the trained model's text, as recipe.sample says. Running out of memory for it is a
    warning: the run is trained and its checkpoint saved, and `gptkit sample` needs less memory than
    this process, which holds the optimizer's state and the gradients too. A SIGINT or SIGTERM (under
    interrupt_on_signals) stops the sample, not the run: what was made is written, and the Interrupted
    to raise once the run is recorded as finished is returned."""
    model, sp = trainer.model, recipe.sample
    made, stopped = [], None  # the prompt, then the characters as they come
    try:
        with blaming(trainer.specs, "while sampling after training"):
            if model.cache_mismatch is None:  # a cache bug hidden by the initial weights shows now
                cache_warning = check_forward(model, recipe.model)  # (samples then recompute the context)
                if cache_warning:
                    warn(cache_warning)
            text = sample(model, dataset.vocab, sp.prompt, sp.tokens, sp.temperature, sp.top_k, recipe.seed,
                          on_text=made.append)
    except Interrupted as e:
        text, stopped = "".join(made), e
    except Exception as e:
        if not out_of_memory(e):
            raise
        (run_dir / "samples.txt").unlink(missing_ok=True)  # an earlier session's, of another model
        warn(f"out of memory on {out_of_memory_on(e, trainer.device)} while sampling after training, so there is "
             f"no samples.txt; the run is finished and its checkpoint saved: sample it with gptkit sample "
             f"{quote(run_dir)}, which holds no training state")
        return None
    count = sum(map(len, made[1:])) if stopped else sp.tokens
    where = "not saved"  # till it is
    try:
        with signals_held():  # a signal while it is written and shown: once it is
            try:
                if text:
                    write_text(run_dir / "samples.txt", text)
                    where = "in samples.txt too"
                else:  # stopped before the prompt: nothing made (an earlier session's file is of other settings)
                    (run_dir / "samples.txt").unlink(missing_ok=True)
                    where = "none made"
            except OSError as e:  # a full disk, say: the run is trained and saved all the same
                warn(f"could not write samples.txt in {run_dir}: {e.strerror or e}; the run is finished and its "
                     f"checkpoint saved: sample it with gptkit sample {quote(run_dir)}")
                where = "not saved"
            log(f"Sample ({count:,} characters after the prompt{f' of {sp.tokens:,}' if count < sp.tokens else ''}, "
                f"{where}):\n{text}\n")
    except Interrupted as e:
        stopped = stopped or e
    if stopped is None:
        return None
    more = f"gptkit sample {quote(run_dir)}" if on_command_line() else \
        f"model, _, vocab = load_model({str(run_dir)!r}); sample(model, vocab, prompt, tokens)"
    kept = "not saved" if where == "not saved" else "in samples.txt"
    made_text = (f"cut short at {count:,} of {sp.tokens:,} characters, {kept}" if text else "not made") \
        if count < sp.tokens else kept
    return Interrupted(stopped.signum, f"{stopped}: the run is finished and saved, its sample {made_text}; "
                                       f"{more} makes {'more' if text else 'one'}")


def save(run_dir: Path, trainer: Trainer, recipe: Recipe, dataset: CharDataset, metrics: BinaryIO) -> None:
    """The checkpoint, then summary.json as fresh as it (still `running`): a run killed later (SIGKILL,
    a power cut) shows the steps, tokens, time and losses it can be resumed from, not those of its start."""
    # Out of memory, a failed save, as a full disk is: no setting that sizes a step would help
    no_memory = out_of_memory_as(lambda e: CheckpointError(
        f"could not save the checkpoint in {run_dir}: out of memory (a save copies the model and optimizer state "
        f"into the machine's memory); {kept(run_dir)}{then_resume(e, run_dir)}"))
    try:
        with no_memory:
            os.fsync(metrics.fileno())  # the metrics always reach at least as far as the checkpoint
            save_checkpoint(run_dir / "checkpoint.pt", trainer.model, recipe.to_dict(), dataset.itos,
                            step=trainer.state.step, trainer=trainer.state_dict(), text_sha256=dataset.fingerprint,
                            plugins=recipe.plugin_sources(), software=software())
    except OSError as e:
        raise gone(run_dir) or CheckpointError(f"could not save the checkpoint in {run_dir}: {e.strerror or e}; "
                                               f"{kept(run_dir)}{then_resume(e, run_dir)}") from None
    try:  # atomic, as the checkpoint: the old one or the new
        write_summary(run_dir, recipe, trainer, "running", checkpoint_step=trainer.state.step)
    except OSError as e:
        raise gone(run_dir) or CheckpointError(f"could not write summary.json in {run_dir}: {e.strerror or e}; the "
                                               f"checkpoint is saved{then_resume(e, run_dir)}") from None


def gone(run_dir: Path) -> CheckpointError | None:
    """The error of a save that failed because the run's folder is no longer there, moved or deleted while
    the run trained (writes do not make it again, half empty); None while it is there."""
    if run_dir.is_dir():
        return None
    again = "gptkit run --resume NEW_FOLDER" if on_command_line() else given("resume", "NEW_FOLDER")
    return CheckpointError(f"the run folder {run_dir} is gone: it was moved or deleted while the run trained, so "
                           f"nothing more is saved; if it was moved, resume it from where it is now ({again})")


def kept(run_dir: Path) -> str:
    """What a failed save left to resume from (the temporary file beside the checkpoint is gone)."""
    if (run_dir / "checkpoint.pt").exists():
        return "the previous checkpoint is intact"
    return f"no checkpoint was saved yet ({'the run will start' if goes_on_by() else 'resuming starts the run'} over)"


def record_failure(run_dir: Path, recipe: Recipe, trainer: Trainer, status: str, reason: str,
                   resumable: bool = True) -> None:
    """Say in summary.json why the run stopped, if the disk lets us: the error itself matters more."""
    try:
        write_summary(run_dir, recipe, trainer, status, reason, resumable)
    except OSError:
        pass


def history(before: dict, key: str, now: dict | str) -> dict:
    """{"KEY_history": [...]}: the records of `key` ("software", "plugins", "precision", "processes") of the run's sessions
    before this one that differ from this session's (`now`), from its summary.json so far (`before`; none:
    {}), so that a run resumed with other code, or on a device of other arithmetic, is not taken for one
    trained by this session's alone (an ablation checks them all)."""
    records = earlier_sessions(before, key, type(now))
    earlier = before.get(key)
    if isinstance(earlier, type(now)) and earlier != now and earlier not in records:
        records.append(earlier)
    return {f"{key}_history": records} if records else {}


def write_summary(run_dir: Path, recipe: Recipe, trainer: Trainer, status: str, reason: str | None = None,
                  resumable: bool = True, checkpoint_step: int | None = None) -> dict:
    s, before = trainer.state, summary_of(run_dir)
    summary = {
        "name": recipe.name,
        "status": status,
        "reason": reason,
        "resumable": resumable,  # false once finished, or diverged: resumed, it would diverge again
        "final_train_loss": s.train_loss,
        "final_val_loss": s.val_loss,
        "best_val_loss": s.best_val_loss,
        "params": trainer.model.num_params(),
        "vocab_size": trainer.model.config.vocab_size,  # ln of it: a uniform guess's loss, which a run should beat
        "flops_per_token": trainer.model.flops_per_token(),
        "steps": s.step,
        "checkpoint_step": trainer.saved_step if checkpoint_step is None else checkpoint_step,  # where --resume goes on
        "total_steps": trainer.total_steps,
        "epochs": s.epoch + 1,
        "tokens": s.tokens,
        "data": trainer.dataset.describe(),  # what it trained on: a data.max_lines cut, the validation split
        "tokens_per_s": s.tokens / s.step_seconds if s.step_seconds else None,  # of the steps, as metrics.jsonl's
        "wall_seconds": s.seconds,
        "device": str(trainer.device),
        "processes": (processes := trainer.dist.world_size),  # under torchrun, each on its share of every batch
        **history(before, "processes", processes),  # resumed with others: close to one unbroken run, not equal
        "plugins": (plugins := recipe.plugin_sources()),  # what resuming needs installed; sampling, the model.* ones
        **history(before, "plugins", plugins),
        "precision": (precision := trainer.arithmetic),  # what train.precision resolved to: another device may differ
        **history(before, "precision", precision),
        "software": software(),  # an ablation pools only seeds trained by the same
        **history(before, "software", software()),
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / "summary.json", summary)
    return summary
