"""Reading finished run folders: summary, resolved recipe, validation curve."""

import json
from pathlib import Path

import yaml

from ..errors import UserError
from ..io import read_text
from ..training.resume import resumable, summary_of


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, or None if it is missing or partial."""
    return summary_of(run_dir) or None


def finished(summary: dict | None) -> bool:
    return summary is not None and summary.get("status") == "finished"


def diverged(summary: dict | None) -> bool:
    """Stopped for good: resumed, the run would diverge again."""
    return summary is not None and summary.get("status") == "failed" and not resumable(summary)


def ended_summary(run_dir: Path) -> dict | None:
    """The run's summary if the run will not go on (finished or diverged), else None."""
    summary = read_summary(run_dir)
    return summary if finished(summary) or diverged(summary) else None


def run_recipe(run_dir: Path) -> dict:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (it has no recipe.yaml)")
    try:
        recipe = yaml.safe_load(read_text(path, "run recipe"))
    except yaml.YAMLError:
        problem = "it is not valid YAML"
    else:
        problem = None if isinstance(recipe, dict) else "it holds no mapping of recipe fields"
    if problem:
        raise damaged(path, problem)
    return recipe


def damaged(path: Path, problem: str) -> UserError:
    return UserError(f"{path} is damaged ({problem}); restore it, or leave that run out")


def val_curve(run_dir: Path, recipe: dict | None = None) -> list[tuple[int, float]]:
    """[(tokens seen, validation loss)] in step order, from metrics.jsonl."""
    recipe = recipe or run_recipe(run_dir)
    try:
        tokens_per_step = recipe["train"]["batch_size"] * recipe["model"]["block_size"]
    except (KeyError, TypeError):
        raise damaged(run_dir / "recipe.yaml", "it lacks train.batch_size or model.block_size") from None
    path, curve = run_dir / "metrics.jsonl", []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by an interruption
                continue
            if record.get("val_loss") is not None:
                curve.append((record["step"] * tokens_per_step, record["val_loss"]))
    return curve
