"""Reading a run folder: its summary.json (how the run ended, or why it stopped), recipe.yaml,
metrics.jsonl (the validation curve), and what its checkpoint records (the text's SHA-256, the plugins)."""

import json
import math
import re
from pathlib import Path

from ..errors import UserError
from ..io import missing, quote, read_text
from ..recipe import yaml
from .checkpoint import peek


def is_ablation_folder(path: Path) -> bool:
    """An ablation's folder (its ablation.yaml, its runs in ARM/seed-N, see ablation.runner), not a run's."""
    return (path / "ablation.yaml").is_file() and not (path / "recipe.yaml").is_file()


def ablate_again(folder: Path) -> str:
    """The command that resumes the ablation in `folder` (or gives it more seeds)."""
    return f"gptkit ablate {quote(folder / 'ablation.yaml')} --out {quote(folder)}"


def ablation_runs(path: Path) -> dict[Path, int]:
    """The ablation folder's run folders (ARM/seed-N), in path order, with their seeds."""
    found = ((p, re.fullmatch(r"seed-(-?\d+)", p.name)) for p in sorted(path.glob("*/seed-*")) if p.is_dir())
    return {p: int(m[1]) for p, m in found if m}


def runs_within(folder: Path, called: str = "it") -> str:
    """'; it holds runs: give one of them, e.g. FOLDER/RUN' for a folder whose subfolders are runs (runs/
    itself, an ablation arm's folder of seed-N runs), the newest named; "" otherwise. `called`: the
    folder's name in that sentence."""
    try:
        runs = [p for p in folder.iterdir() if (p / "recipe.yaml").is_file()]
    except OSError:
        return ""
    if not runs:
        return ""
    newest = max(runs, key=lambda p: (p / "recipe.yaml").stat().st_mtime)
    return f"; {called} holds runs: give one of them, e.g. {quote(newest)}"


def ablation_seeds(path: Path) -> list[int]:
    """The seeds of the ablation folder's runs, in order."""
    return sorted(set(ablation_runs(path).values()))


def ablation_run_example(path: Path) -> str:
    """One run of the ablation folder, as ARM/seed-N: a real one if it has any."""
    run = next(iter(ablation_runs(path)), None)
    return f"{run.parent.name}/{run.name}" if run else "ARM/seed-N"


def summary_of(run: Path) -> dict:
    """The run's summary.json; empty if it is missing or partial."""
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def earlier_sessions(summary: dict, key: str, kind: type = dict) -> list:
    """A run's records of `key` ("software", "plugins", "precision": of type `kind`) from its earlier
    sessions that differ from its last's (summary.json's KEY_history: a run resumed with other code)."""
    kept = summary.get(f"{key}_history")
    return [r for r in kept if isinstance(r, kind)] if isinstance(kept, list) else []


def resumable(summary: dict) -> bool:
    """Whether the run whose summary.json this is can go on: not finished, not diverged. A missing or
    damaged summary.json ({}) does not stop a run that has a checkpoint."""
    return bool(summary.get("resumable", True))


def stopped_for_good(summary: dict) -> bool:
    """Failed in a way that resuming would repeat: diverged."""
    return summary.get("status") == "failed" and not resumable(summary)


def finished(summary: dict | None) -> bool:
    return summary is not None and summary.get("status") == "finished" and not _loss_not_finite(summary)


def diverged(summary: dict | None) -> bool:
    return summary is not None and (stopped_for_good(summary) or summary.get("status") == "finished"
                                    and _loss_not_finite(summary))


def _loss_not_finite(summary: dict) -> bool:
    """A final validation loss of NaN or inf: a run an older gptkit recorded as finished after its last
    step broke the weights (one now stops as diverged)."""
    loss = summary.get("final_val_loss")
    return isinstance(loss, float) and not math.isfinite(loss)


def failed(summary: dict | None) -> bool:
    """Failed, but not for good: a component's error, which a rerun trains again (once it is fixed)."""
    return summary is not None and summary.get("status") == "failed" and not stopped_for_good(summary)


def ended(summary: dict | None) -> bool:
    """Whether the run whose summary this is will not go on: finished or diverged (a result, reused as it is)."""
    return finished(summary) or diverged(summary)


def no_such_folder(path: Path) -> str:
    """"no such folder", or why a symbolic link by that name leads to none."""
    why = missing(path, "a run folder")
    return "no such folder" if why == "not found" else why


def run_recipe(run_dir: Path) -> dict:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        problem = (no_such_folder(run_dir) if not run_dir.exists() else
                   f"not a run folder (it has no recipe.yaml){runs_within(run_dir)}")
        raise UserError(f"{run_dir}: {problem}")
    try:  # read as recipes are (YAML 1.2's 1e-3 and no), or an edited file would differ from itself
        recipe, _ = yaml.load(read_text(path, "run recipe"), str(path))
    except yaml.YAMLError:
        problem = "it is not valid YAML"
    else:
        problem = None if isinstance(recipe, dict) else "it holds no mapping of recipe fields"
    if problem:
        raise damaged(path, problem)
    return recipe


def damaged(path: Path, problem: str) -> UserError:
    return UserError(f"{path} is damaged ({problem}); restore it, or leave that run out")


def metric_records(path: Path):
    """(line, record) for each record of a metrics.jsonl, passing by lines that are not one: the last cut
    short by a kill, or damage (bytes that are not UTF-8 JSON, a record without an integer step)."""
    if not path.is_file():
        return
    for raw in path.read_bytes().splitlines(keepends=True):
        try:
            line = raw.decode("utf-8")
            record = json.loads(line)
        except (ValueError, RecursionError):  # UnicodeDecodeError included; RecursionError: [[[[...
            continue
        if isinstance(record, dict) and type(record.get("step")) is int:
            yield line, record


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """[(tokens seen, validation loss)] in step order, from metrics.jsonl: finite losses only (a run that
    diverged, NaN from there on, is drawn up to its last finite one)."""
    recipe = run_recipe(run_dir)
    try:
        tokens_per_step = recipe["train"]["batch_size"] * recipe["model"]["block_size"]
    except (KeyError, TypeError):
        raise damaged(run_dir / "recipe.yaml", "it lacks train.batch_size or model.block_size") from None
    return [(record["step"] * tokens_per_step, record["val_loss"])
            for _, record in metric_records(run_dir / "metrics.jsonl")
            if isinstance(record.get("val_loss"), int | float) and not isinstance(record["val_loss"], bool)
            and math.isfinite(record["val_loss"])]


def trained_text(run_dir: Path) -> str | None:
    """The SHA-256 of the text the run's checkpoint was trained on; None without a checkpoint."""
    path = run_dir / "checkpoint.pt"
    return peek(path, "text_sha256") if path.is_file() else None


def trained_with(run_dir: Path) -> dict:
    """The run's plugins record (see `plugin_changes`): its checkpoint's, or, without a readable one, its
    summary.json's; {} if neither has one."""
    try:
        used = peek(run_dir / "checkpoint.pt", "plugins")
    except UserError:  # none yet, or damaged: the summary, written at the start, records the same
        used = None
    if not isinstance(used, dict):
        used = summary_of(run_dir).get("plugins")
    return used if isinstance(used, dict) else {}
