"""Reading run folders for the reports: which runs ended (finished or diverged), validation curves."""

import json
from pathlib import Path

from ..training.resume import damaged, run_recipe, stopped_for_good, summary_of


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, or None if it is missing or partial."""
    return summary_of(run_dir) or None


def finished(summary: dict | None) -> bool:
    return summary is not None and summary.get("status") == "finished"


def ended_summary(run_dir: Path) -> dict | None:
    """The run's summary if the run will not go on (finished or diverged), else None."""
    summary = read_summary(run_dir)
    return summary if finished(summary) or (summary is not None and stopped_for_good(summary)) else None


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
