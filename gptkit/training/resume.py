"""Finding a run to resume, and refusing one that the recipe no longer describes."""

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from ..io import write_text
from ..recipe import Recipe, flatten

# Keys that may change between a run and its resumption without making it a different run. The
# budget may grow (a cosine schedule then stretches over the new total); anything else that shapes
# the model, the data, or the optimisation must stay as it was.
MAY_CHANGE = ("name", "sample.*", "data.path", "train.device", "train.log_every", "train.eval_every",
              "train.eval_batches", "train.checkpoint_every", "train.epochs", "train.max_steps")


def recipe_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs and that may not change."""
    a, b = flatten(old), flatten(new)
    keys = sorted(k for k in a.keys() | b.keys()
                  if a.get(k) != b.get(k) and not any(fnmatch.fnmatchcase(k, p) for p in MAY_CHANGE))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys]


def check_resumable(run_dir: Path, checkpoint: dict, recipe: Recipe, itos: list[str]) -> None:
    if "trainer" not in checkpoint:
        raise UserError(f"{run_dir}/checkpoint.pt holds weights only, no training state to resume from")
    changes = recipe_diff(checkpoint["recipe"], recipe.to_dict())
    if checkpoint["itos"] != list(itos):
        changes.append(f"vocabulary: {len(checkpoint['itos'])} characters -> {len(itos)} (the text changed)")
    if changes:
        raise UserError(f"cannot resume {run_dir}: the recipe changed in ways that matter:\n"
                        + "\n".join(f"  {c}" for c in changes)
                        + "\nUndo these changes, or start a new run without --resume.")
    for leftover in run_dir.glob(".*.tmp"):  # from a save that was killed midway
        leftover.unlink()


def find_resumable(runs_dir: Path, name: str, log: Callable[[str], None]) -> Path | None:
    """The newest unfinished run of recipe `name` that has a checkpoint, or None."""
    candidates = sorted((p for p in runs_dir.glob(f"{name}-*") if (p / "checkpoint.pt").is_file()),
                        key=lambda p: p.stat().st_mtime, reverse=True)
    for run in candidates:
        if _status(run) != "finished":
            return run
    log(f"No unfinished run of {name} in {runs_dir} to resume; starting a new one.")
    return None


def _status(run: Path) -> str | None:
    try:
        return json.loads((run / "summary.json").read_text()).get("status")
    except (OSError, ValueError):
        return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past the checkpoint's step: the resumed run writes them again."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError):  # a line cut short by a kill
            break
    write_text(path, "".join(kept))
