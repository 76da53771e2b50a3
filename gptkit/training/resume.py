"""Finding a run to resume, and refusing one that the recipe no longer describes."""

import contextlib
import copy
import fnmatch
import math
import re
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from ..errors import OutOfMemory, UserError, arg, given, goes_on_by, on_command_line
from ..io import quote, temporaries, write_text
from ..plugins import software_changes
from ..recipe import Recipe, flatten, yaml
from .checkpoint import changed_plugins, load_checkpoint, missing_plugins, plugin_changes, stored_recipe
from .folder import (ablate_again, is_ablation_folder, metric_records, no_such_folder, resumable, run_recipe,
                     runs_within, stopped_for_good, summary_of, trained_with)
from .speed import resolved_speed
from .trainer import run_steps, state_dict_problem

# Keys that may change between a run and its resumption without making it a different run (the text
# itself is checked by its SHA-256, wherever it lives and however it was made; compiling and
# micro-batches change the speed and float rounding, not the optimisation, so a GPU run may go on on
# a CPU, though not bit for bit). The budget may change (run.py refuses one below the step reached; a
# cosine schedule then fits the new total, with a warning); anything else that shapes the model, the
# data, or the optimisation must stay as it was.
MAY_CHANGE = ("name", "sample.*", "data.path", "data.corpus", "data.corpus.*", "train.device", "train.compile",
              "train.micro_batch_size", "train.log_every", "train.eval_every", "train.eval_batches",
              "train.checkpoint_every", "train.epochs", "train.max_steps")


# Of the keys that may change, those that decide when torchrun's processes meet (a step budget, an
# evaluation, a save): the others may also differ between the processes of one job (one machine's own
# --set data.path, train.micro_batch_size or train.compile), and imports, files at a path of each machine's.
MEET = ("train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every", "train.epochs",
        "train.max_steps")
MAY_DIFFER_BY_PROCESS = (*(k for k in MAY_CHANGE if k not in MEET), "imports")


# Of the keys that may change, those a resumed run need not say it goes on with: the text is checked by its
# SHA-256 wherever it comes from; the budget is said by the run's opening line ("it trained toward 60 steps")
# and its last ("1,500 steps").
UNSAID = ("name", "data.path", "data.corpus", "data.corpus.*", "train.epochs", "train.max_steps")


def matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def differing(a: dict, b: dict, may_change: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """The keys of two flattened recipes whose values differ, but for those `may_change` (patterns)."""
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and not matches(k, may_change))


def recipe_changes(old: dict, new: dict, may_change: tuple[str, ...] = MAY_CHANGE) -> list[tuple[str, str]]:
    """(key, 'key: old -> new') for every key of two recipes whose value differs, but for those `may_change`."""
    a, b = effective(flatten(old)), effective(flatten(new))
    spelled = lambda flat, k: yaml.dump(flat[k], flow=True) if k in flat else "(absent)"  # noqa: E731  as a recipe writes it
    return [(k, f"{k}: {spelled(a, k)} -> {spelled(b, k)}") for k in differing(a, b, may_change)]


def process_differences(every: list[dict]) -> str:
    """'train.lr: 0.001 on rank 0, 0.1 on rank 1; ...' for the keys of every process's flattened recipe (in
    rank order) that differ from rank 0's, but for those MAY_DIFFER_BY_PROCESS; '' if none do."""
    keys = sorted({k for s in every[1:] for k in differing(every[0], s, MAY_DIFFER_BY_PROCESS)})
    spelled = lambda s, k: yaml.dump(s[k], flow=True) if k in s else "(absent)"  # noqa: E731  as a recipe writes it
    said = [f"{k}: " + ", ".join(f"{spelled(s, k)} on rank {r}" for r, s in enumerate(every)
                                  if r == 0 or s.get(k) != every[0].get(k)) for k in keys[:4]]
    return "; ".join(said) + (f" (and {len(keys) - 4} more keys)" if len(keys) > 4 else "")


def settings_changed(checkpoint: dict, run_dir: Path, recipe: Recipe) -> list[str]:
    """'key: old -> new' for each key that may change (MAY_CHANGE) and did since the run's checkpoint: what
    `recipe` resumes it with that it did not train with, such as a recipe file given again without the
    --set values the run was started with. Not its name, where its text comes from or its budget (UNSAID)."""
    return [how for key, how in differences(checkpoint, run_dir, recipe)
            if matches(key, MAY_CHANGE) and not matches(key, UNSAID)]


def differences(checkpoint: dict, run_dir: Path, recipe: Recipe) -> list[tuple[str, str]]:
    """(key, 'key: old -> new') for every key of the recipe `checkpoint` (of `run_dir`) was saved with that
    `recipe` gives another value, but for those that resolve as the old one did on the device the run
    trained on (train.precision auto and fp32 on a CPU). The stored recipe is compared as it validates now:
    a parameter a component's new version added, at its default, is no change (the stored recipe only
    predates it)."""
    stored = stored_recipe(checkpoint, run_dir / "checkpoint.pt")
    alike = resolved_alike(stored, recipe, summary_of(run_dir).get("device"))
    return [(key, how) for key, how in recipe_changes(stored.to_dict(), recipe.to_dict(), ()) if key not in alike]


def resolved_alike(old: Recipe, new: Recipe, trained_on: str | None) -> set[str]:
    """The keys the recipes a run trained with (`old`, on the device `trained_on`, as its summary.json
    records it) and resumes with (`new`) spell apart that resolve alike (resolved_speed): train.device cpu
    and auto without a GPU, train.compile auto and false on a CPU. None unless the run trained on the
    device it resumes on (`old` resolved here says nothing of a GPU it trained on), or if its device is
    not here."""
    try:
        here = resolved_speed(new)
        if trained_on != here["train.device"]:
            return set()
        return {key for key, value in resolved_speed(old).items() if here[key] == value}
    except UserError:
        return set()


def effective(flat: dict) -> dict:
    """A flattened recipe with the values its unset keys stand for: no data.stride is a stride of one block."""
    if flat.get("data.stride") is None and "model.block_size" in flat:
        flat = {**flat, "data.stride": flat["model.block_size"]}
    return flat


def changes_since(checkpoint: dict, run_dir: Path, recipe: Recipe, dataset) -> list[tuple[str, str]]:
    """What keeps `recipe` and its text (a CharDataset) from resuming the run `checkpoint` (of `run_dir`)
    was saved by, as (what, how) pairs: ("train.lr", "train.lr: 0.002 -> 0.001") for each recipe key that
    differs and may not change (MAY_CHANGE; see `differences`; data.max_lines only with another text),
    ("vocabulary", ...) or ("text", ...) for another text; [] if it may resume."""
    same_text = checkpoint["itos"] == list(dataset.itos) and checkpoint.get("text_sha256") == dataset.fingerprint
    # Lines cut otherwise from the same text (a file shortened to the lines the run read) go on; else the cut is said.
    changes = [(key, how) for key, how in differences(checkpoint, run_dir, recipe)
               if not matches(key, MAY_CHANGE) and not (same_text and key == "data.max_lines")]
    another = f"data: the text at {recipe.data.path} is not the one the run was trained on"
    if checkpoint["itos"] != list(dataset.itos):
        old, new = set(checkpoint["itos"]), set(dataset.itos)
        changes.append(("vocabulary", f"{another} (its vocabulary: {len(old)} characters -> {len(new)}"
                                      f"{characters_changed(old, new)})"))
    elif checkpoint.get("text_sha256", dataset.fingerprint) != dataset.fingerprint:  # absent: an older checkpoint
        changes.append(("text", f"{another} (SHA-256 {checkpoint['text_sha256'][:12]}... -> "
                                f"{dataset.fingerprint[:12]}...)"))
    return changes


def characters_changed(old: set[str], new: set[str]) -> str:
    """', without 'x', with 'Ω' and 2 more': how two vocabularies differ, a few characters named."""
    said = []
    for how, chars in (("without", old - new), ("with", new - old)):
        if chars:
            listed = sorted(chars)
            more = f" and {len(listed) - 3} more" if len(listed) > 3 else ""
            said.append(f"{how} {', '.join(map(repr, listed[:3]))}{more}")
    return "".join(f", {s}" for s in said)


WEIGHTS_ONLY = "its checkpoint.pt holds weights only, no training state to resume from"


def check_resumable(run_dir: Path, checkpoint: dict, recipe: Recipe, dataset, warn: Callable[[str], None]) -> None:
    """Refuse to resume `run_dir` if the recipe or the text (a CharDataset) is no longer the run's. A
    component that now comes from another version of its package (or another package) is allowed, with
    a warning through `warn` (as is a plugin or local file whose code changed since): its weights must still
    fit, but the steps from here on run other code."""
    if "trainer" not in checkpoint:
        problem = WEIGHTS_ONLY
    else:
        lacks = state_dict_problem(checkpoint["trainer"], checkpoint["step"]) or (
            None if isinstance(checkpoint.get("text_sha256", ""), str) else "text_sha256")
        problem = lacks and f"its checkpoint.pt lacks a valid {lacks}"
    if problem:
        raise UserError(f"cannot resume {run_dir}: {problem}; sample it with gptkit sample {quote(run_dir)}, or start "
                        f"a new run without {arg('resume')}")
    refuse_if_stopped_for_good(run_dir)
    invalid = invalid_recipe(checkpoint, run_dir)  # said as `gptkit sample` says it, not as changes to undo
    if invalid:
        raise UserError(f"cannot resume {run_dir}: {invalid}\nThe run cannot go on from that checkpoint; start a new "
                        f"run without {arg('resume')}.")
    refuse_changes(run_dir, changes_since(checkpoint, run_dir, recipe, dataset))
    for change in plugin_changes(checkpoint.get("plugins"), recipe):
        warn(f"{change}; resuming {run_dir} with it")
    for change in software_changes(checkpoint.get("software")):  # its losses from here on may differ
        warn(f"{run_dir} was trained with {change}; resuming it with the new")


def with_plugin_hint(e: UserError, run_dir: Path) -> UserError:
    """`e`, met reading the recipe of the run `run_dir` to resume it, with the hints `load_model` gives when
    a component the run was trained with is no longer known here (a plugin uninstalled, or turned off), or
    comes from another version (whose parameters may have been renamed)."""
    used = trained_with(run_dir)
    hint = missing_plugins(used, prefix="") + changed_plugins(used, prefix="")
    if not hint:
        return e
    hinted = copy.copy(e)  # of its own class: its exit code, and what catches it, stay
    hinted.args = (f"{e}{hint}",)
    return hinted


def check_restartable(run_dir: Path, recipe: Recipe) -> None:
    """A run folder without a checkpoint starts over, but only with the recipe it was made with, and
    not once it finished or saved one (its checkpoint was deleted: starting over would overwrite what
    it trained)."""
    summary = summary_of(run_dir)
    if not summary:  # a folder of the user's own: training there would overwrite and delete files
        raise not_a_run(run_dir, "not a run folder (no readable summary.json)")
    refuse_if_stopped_for_good(run_dir)
    if summary.get("status") == "finished":
        raise UserError(f"cannot resume {run_dir}: it finished, and its checkpoint.pt is gone; "
                        f"start a new run without {arg('resume')}")
    saved = summary.get("checkpoint_step")
    if type(saved) is int and saved > 0:  # starting over would overwrite what it trained
        raise UserError(f"cannot resume {run_dir}: its checkpoint.pt (of step {saved:,}) is gone; put it back, or start "
                        f"a new run without {arg('resume')}")
    refuse_changes(run_dir, recipe_changes(run_recipe(run_dir), recipe.to_dict()))


def refuse_if_stopped_for_good(run_dir: Path) -> None:
    summary = summary_of(run_dir)
    if stopped_for_good(summary):
        raise UserError(f"cannot resume {run_dir}: {summary.get('reason')}\nStart a new run without {arg('resume')}.")


def refuse_changes(run_dir: Path, changes: list[tuple[str, str]]) -> None:
    """Refuse to resume `run_dir` for `changes`, (what, how) pairs as changes_since gives them."""
    if changes:
        text = sum(what in ("text", "vocabulary") for what, _ in changes)
        what = "its text" if text == len(changes) else "the recipe and its text" if text else "the recipe"
        raise UserError(f"cannot resume {run_dir}: {what} changed in ways that matter:\n"
                        + "\n".join(f"  {how}" for _, how in changes)
                        + f"\nUndo these changes, or start a new run without {arg('resume')}.")


def check_run_dir(path: str | Path) -> Path:
    """The path given to resume (`--resume PATH`), which must be a run folder."""
    path = Path(path)
    if not path.is_dir():
        raise not_a_run(path, "not a folder" if path.exists() else no_such_folder(path))
    if is_ablation_folder(path):
        raise UserError(f"{given('resume', path)}: an ablation folder, not a run folder; to resume the ablation: "
                        f"{ablate_again(path)}")
    ablation = path.absolute().parent.parent
    if not goes_on_by() and re.fullmatch(r"seed-(-?\d+)", path.name) and is_ablation_folder(ablation):
        # Resumed alone, with a recipe file's budget say, it would be no longer the ablation's: refused there.
        raise UserError(f"{given('resume', path)}: a run of the ablation in {ablation}, which resumes its runs "
                        f"itself: {ablate_again(ablation)} (to train this run further alone, copy its folder out "
                        "first)")
    return path


def not_a_run(path: Path, problem: str) -> UserError:
    fix = runs_within(Path(path)) or "; give a run folder such as runs/NAME-YYYYmmdd-HHMMSS"  # runs/ itself: one of them
    return UserError(f"{given('resume', path)}: {problem}{fix}, or {given('resume', 'auto')} with a recipe")


def remove_leftovers(run_dir: Path) -> None:
    """Temporary files of a save that was killed midway. Rank 0's business alone under torchrun: it
    writes files of its own in the folder while other ranks would still be looking."""
    for leftover in temporaries(run_dir):
        leftover.unlink(missing_ok=True)


def _modified(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except OSError:  # removed since it was listed: its checkpoint is then not found either
        return -math.inf


def find_resumable(runs_dir: Path, recipe: Recipe, dataset, log: Callable[[str], None],
                   note: Callable[[str], None] = lambda message: None) -> tuple[Path, dict, tuple | None] | None:
    """The newest run of `recipe` (by its name) that has a checkpoint and that this recipe and its text
    (a CharDataset) could resume, with that checkpoint loaded and which save it is (`saved`); or None.
    A run is passed by when it finished or diverged, silently, or, with a note through `note`, when
    another process trains it, or its recipe or text differs in a way `check_resumable` would refuse
    (`changes_since`), or its checkpoint cannot be read. Folders are named NAME-YYYYmmdd-HHMMSS[-N]: a
    recipe named `tiny` must not pick a run of `tiny-wide`."""
    name = recipe.name
    own = re.compile(re.escape(name) + r"-\d{8}-\d{6}(-\d+)?")
    runs = [p for p in runs_dir.glob(f"{name}-*") if own.fullmatch(p.name)]
    candidates = sorted((p for p in runs if (p / "checkpoint.pt").is_file()), key=_modified, reverse=True)
    passed = 0
    for run in candidates:
        if not resumable(summary_of(run)):  # finished, or diverged
            continue
        save = saved(run)  # (before it is read: a save meanwhile is then seen as one)
        checkpoint, why = checkpoint_to_resume(run, recipe, dataset)
        if checkpoint is None:
            note(f"note: not resuming {run}: {why}")
            passed += 1
            continue
        return run, checkpoint, save
    early = sum(resumable(summary_of(p)) for p in runs if p not in candidates)
    ended = len(runs) - passed - early  # finished or diverged (or lacking a summary)
    others = ", ".join(f"{n} {what}" for n, what in ((early, f"stopped before {'its' if early == 1 else 'their'} "
                                                                    "first checkpoint"),
                                                     (ended, "ended")) if n)
    log(f"No {'other ' if passed else ''}unfinished run of {name} in {runs_dir} to resume"
        f"{f' ({others})' if others else ''}; starting a new one.")
    return None


def invalid_recipe(checkpoint: dict, run_dir: Path) -> str | None:
    """What is wrong with the recipe stored in the run's checkpoint (edited by hand), or None."""
    try:
        stored_recipe(checkpoint, run_dir / "checkpoint.pt")
    except UserError as e:
        return str(e)
    return None


def checkpoint_to_resume(run: Path, recipe: Recipe, dataset) -> tuple[dict | None, str]:
    """The checkpoint of the unfinished run `run` if `--resume auto` may resume it; else None and why not."""
    if is_locked(run):  # another process trains it now
        return None, "it is being trained by another process"
    try:
        checkpoint = load_checkpoint(run / "checkpoint.pt")
    except OutOfMemory:  # the machine's state, not the run's: passing the run by would start another
        raise
    except UserError as e:
        return None, str(e)
    if "trainer" not in checkpoint:
        return None, WEIGHTS_ONLY
    invalid = invalid_recipe(checkpoint, run)
    if invalid:
        return None, invalid
    changes = [what for what, _ in changes_since(checkpoint, run, recipe, dataset)]
    keys = [what for what in changes if what not in ("vocabulary", "text")]
    differs, text = f"its recipe differs ({', '.join(keys)})", f"it was trained on another text than {recipe.data.path}"
    if keys and keys == changes:  # the run's own recipe.yaml would go on with it
        again = (f"gptkit run --resume {quote(run)}" if on_command_line()
                 else f"train(load_recipe({str(run / 'recipe.yaml')!r}), resume={str(run)!r})")
        return None, f"{differs}; to go on with its own recipe: {again}"
    if changes:
        return None, (f"{differs} and {text}" if keys else text)
    budget = run_steps(recipe, dataset)
    if checkpoint["step"] > budget:  # resumed, it would be refused: there is nothing left to train
        return None, f"it has trained {checkpoint['step']:,} steps, past this recipe's budget of {budget:,}"
    return checkpoint, ""


@contextlib.contextmanager
def lock_run(run_dir: Path):
    """Hold the run folder for as long as this process trains in it: a second `--resume` of the same
    run would interleave both processes' files. The OS drops the lock when the process dies, even
    by kill -9, so no stale lock is left behind. (Without fcntl, on Windows, nothing is locked.)"""
    if fcntl is None:
        yield
        return
    try:
        f = open(run_dir / ".lock", "a")
    except OSError as e:  # the first write into the folder: a read-only one is said here, once, with a way out
        raise UserError(f"{run_dir} cannot be written ({e.strerror}): a run trains and resumes in its own "
                        "folder; copy it somewhere writable and resume the copy") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy(run_dir) from None
        yield


def saved(run_dir: Path) -> tuple | None:
    """Which save of the run's checkpoint is on disk, or None before the first: each save replaces the file."""
    try:
        stat = (run_dir / "checkpoint.pt").stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def check_unchanged(run_dir: Path, save: tuple | None) -> None:
    """Refuse to resume `run_dir` from the save `save` once another process has saved over it: checked
    when the run is locked, since the checkpoint was read before, unlocked, and two resumes started at
    once both read it; the later one would train again from there and write over the other's run."""
    if saved(run_dir) != save:
        raise RunBusy(f"{run_dir} was trained by another process while this one made ready to resume it; "
                      "nothing was trained: resume it again to go on from where that process left it")


class RunBusy(UserError):
    """The run folder is being trained by another process."""


def busy(run_dir: Path) -> RunBusy:
    return RunBusy(f"{run_dir} is being trained by another process; wait for it to end, or stop it "
                   "(Ctrl-C or kill), then resume")


def with_live_status(run_dir: Path, summary: dict) -> dict:
    """A run whose summary says "running" while no process holds its lock was killed (kill -9, a lost
    machine): it cannot say so itself. Resuming it continues from its last checkpoint."""
    if summary.get("status") == "running" and (run_dir / ".lock").exists() and not is_locked(run_dir):
        return {**summary, "status": "stopped (killed?)"}
    return summary


def is_locked(run_dir: Path) -> bool:
    """Whether a process trains in `run_dir` now. A shared probe, and only of an existing lock file:
    probes (every rank of a torchrun job looks) neither block each other nor create files."""
    if fcntl is None:
        return False
    try:
        with open(run_dir / ".lock") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no lock file: never trained by this version, or not ours to read
        return False
    return False


def truncate_metrics(path: Path, step: int, eval_pending: bool = False) -> None:
    """Drop the records the resumed run writes again: those past the checkpoint's step, and its
    step's validation loss if the checkpoint has that evaluation still to do (a resumed run redoes
    it, and a run that then fails before its next checkpoint may be resumed from this one again)."""
    if not path.is_file():
        return
    kept = [line.rstrip("\n") + "\n" for line, record in metric_records(path)  # (a kill just before a newline)
            if not (record["step"] > step or (eval_pending and record["step"] == step and "val_loss" in record))]
    write_text(path, "".join(kept))
