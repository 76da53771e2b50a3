"""Reading run folders for the reports: which runs ended (finished or diverged) or failed, validation curves."""

import math
from pathlib import Path

from ..training.checkpoint import peek
from ..training.resume import damaged, metric_records, run_recipe, stopped_for_good, summary_of


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json, or None if it is missing or partial."""
    return summary_of(run_dir) or None


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


def ended_summary(run_dir: Path) -> dict | None:
    """The run's summary if the run will not go on (finished or diverged), else None."""
    summary = read_summary(run_dir)
    return summary if finished(summary) or diverged(summary) else None


def trained_text(run_dir: Path) -> str | None:
    """The SHA-256 of the text the run's checkpoint was trained on; None without a checkpoint."""
    path = run_dir / "checkpoint.pt"
    return peek(path, "text_sha256") if path.is_file() else None


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """[(tokens seen, validation loss)] in step order, from metrics.jsonl."""
    recipe = run_recipe(run_dir)
    try:
        tokens_per_step = recipe["train"]["batch_size"] * recipe["model"]["block_size"]
    except (KeyError, TypeError):
        raise damaged(run_dir / "recipe.yaml", "it lacks train.batch_size or model.block_size") from None
    return [(record["step"] * tokens_per_step, record["val_loss"])
            for _, record in metric_records(run_dir / "metrics.jsonl")
            if isinstance(record.get("val_loss"), int | float) and not isinstance(record["val_loss"], bool)]
