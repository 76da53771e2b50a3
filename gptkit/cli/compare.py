import json
import os
from collections.abc import Callable
from pathlib import Path

import click

from ..ablation import plot
from ..ablation.plot import HINT, plot_curves
from ..ablation.report import table
from ..errors import UserError
from ..io import cannot_make_folder, home_path, quote
from ..plugins import software_text
from ..recipe import flatten
from ..training.folder import (ablation_seeds, diverged, earlier_sessions, is_ablation_folder, run_recipe, summary_of,
                              trained_text, val_curve)
from ..training.progress import fmt_duration
from ..training.resume import with_live_status
from . import main, non_empty_path

FIGURES = {
    "status": str,
    "final_val_loss": "{:.4f}".format,
    "best_val_loss": "{:.4f}".format,
    "final_train_loss": "{:.4f}".format,
    "params": "{:,}".format,
    "flops_per_token": "{:,}".format,
    "steps": "{:,}".format,
    "tokens": "{:,}".format,
    "tokens_per_s": "{:,.0f}".format,
    "wall_seconds": fmt_duration,
}


@main.command()
@click.argument("run_dirs", metavar="RUN_DIR...", nargs=-1, required=True, type=click.Path(file_okay=False),
                callback=non_empty_path)
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw their validation curves in this file, in the format its extension names "
                   "(.png, .pdf, .svg, ...).")
def compare(run_dirs, plot_path):
    """Print how the recipes, training texts and plugins of several runs differ, and their final figures
    side by side.

    \b
    gptkit compare runs/shakespeare-cpu-20261125-101500 runs/shakespeare-cpu-20261125-103000
    gptkit compare runs/ablations/components-cpu-*/*/seed-1337 --plot curves.png
    """
    if plot_path is not None:  # before any work: a wrong name is not worth reading every run first
        if not plot_path.strip():
            raise UserError("--plot is empty; give an image file, e.g. --plot curves.png")
        plot_path = home_path(plot_path, f"--plot {plot_path}")
        check_plot_path(plot_path)
    dirs = [home_path(d, d) for d in run_dirs]
    real = [os.path.realpath(d) for d in dirs]  # (Path.resolve raises on a symbolic link loop)
    twice = next((d for i, d in enumerate(dirs) if real[i] in real[:i]), None)
    if twice is not None:
        raise UserError(f"{twice} is given twice; give each run once")
    for d in dirs:
        refuse_ablation_folder(d)
    recipes = [flatten(run_recipe(d)) for d in dirs]
    keys = sorted(set().union(*recipes)) + list(PROVENANCE)  # what shapes a run besides its recipe, last
    recipes = [r | {key: row(d) for key, row in PROVENANCE.items()} for r, d in zip(recipes, dirs)]
    names = short_names(dirs)
    differ = [k for k in keys if differs([r.get(k, ABSENT) for r in recipes])]
    if differ:
        click.echo("Differences:\n" + table(["key", *names], [[k, *(show(r.get(k, ABSENT)) for r in recipes)]
                                                               for k in differ]))
    elif len(dirs) > 1:
        click.echo("The recipes, training texts, plugin versions, software and precision are identical.\n")
    summaries = [with_live_status(d, summary_or_status(d)) for d in dirs]
    rows = [[key, *(cell(fmt, s.get(key)) for s in summaries)] for key, fmt in FIGURES.items()]
    click.echo("Final figures:\n" + table(["", *names], rows), nl=False)
    if plot_path is not None:
        curves = {name: [val_curve(d)] for name, d in zip(names, dirs)}
        missing = {name: no_curve(d) for name, d in zip(names, dirs) if not curves[name][0]}
        if len(missing) == len(dirs):
            if all(why == NO_SPLIT for why in missing.values()):
                raise UserError(f"--plot: none of these runs has a validation loss, nor ever will ({NO_SPLIT}); "
                                "nothing to draw")
            raise UserError(f"--plot: none of these runs has a validation loss to draw "
                            f"({'; '.join(f'{name}: {why}' for name, why in missing.items())})")
        if missing:
            left_off = ", ".join(f"{name} ({why})" for name, why in missing.items())
            click.echo(f"warning: --plot leaves out {left_off}", err=True)
        try:
            plot_curves(curves, Path(plot_path), "validation loss")  # matplotlib is there: check_plot_path
        except OSError as e:
            raise UserError(f"--plot {plot_path}: cannot write it: {e.strerror}; choose another file") from None
        click.echo(f"Wrote {plot_path}")


NO_SPLIT = "no validation split: data.val_fraction is 0"


def refuse_ablation_folder(path: Path) -> None:
    """An ablation folder given for a run folder: said as such, with its report and its runs' folders
    (ARM/seed-N inside it, see ablation.runner)."""
    if not is_ablation_folder(path):
        return
    seeds = ablation_seeds(path)
    report = f"its results are in {path / 'results.md'}; " if (path / "results.md").is_file() else ""
    raise UserError(f"{path} is an ablation folder, not a run folder: {report}compare its arms' runs of one seed "
                    f"with: gptkit compare {quote(path)}/*/seed-{min(seeds, default=0)}")


def no_curve(run_dir: Path) -> str:
    """Why a run has no validation curve to draw."""
    if not (run_dir / "metrics.jsonl").is_file():
        return "no metrics.jsonl"
    data = run_recipe(run_dir).get("data")
    if isinstance(data, dict) and data.get("val_fraction") == 0:  # it never will have one
        return NO_SPLIT
    summary = summary_of(run_dir)
    if diverged(summary):
        return "it diverged before its first validation"
    if summary.get("status") in ("running", "interrupted"):  # one may come
        return "no validation loss yet"
    return "no validation loss in its metrics.jsonl"


def check_plot_path(path: Path) -> None:
    if not plot.have_matplotlib():
        raise UserError(f"--plot needs matplotlib, which is not installed: {HINT}")
    try:
        plot.image_format(path)
    except ValueError as e:
        raise UserError(f"--plot {path}: {e}") from None
    why = cannot_make_folder(path.parent)
    if why is not None:
        raise UserError(f"--plot {path}: cannot write it there: {why}; choose another file")


def summary_or_status(run_dir: Path) -> dict:
    """The run's summary, or a status saying why there is none to show."""
    summary = summary_of(run_dir)
    if summary:
        return {**summary, "status": "diverged"} if diverged(summary) else summary  # recorded as failed
    why = no_summary(run_dir)
    return {"status": f"{'damaged' if why == UNREADABLE else 'unknown'} ({why})"}


UNREADABLE = "summary.json unreadable"


def no_summary(run_dir: Path) -> str:
    """Why a run has no summary to read (summary_of gave none)."""
    return UNREADABLE if (run_dir / "summary.json").exists() else "no summary.json"  # there: cut short, hand-edited


def cell(fmt, value) -> str:
    if value is None:
        return "-"
    try:
        return fmt(value)
    except (TypeError, ValueError, OverflowError):  # a hand-edited summary.json: show what is there
        return repr(value)


ABSENT = object()


class Unknown(str):
    """A text or plugin record a run folder cannot tell: never taken as the same as another run's."""


def text_row(run_dir: Path) -> str:
    """The text the run trained on: its checkpoint's SHA-256 (the same data.path may hold another text)."""
    path = run_dir / "checkpoint.pt"
    try:
        sha256 = trained_text(run_dir)
    except UserError:  # a damaged checkpoint: the figures are still worth showing
        return Unknown("unknown (checkpoint.pt unreadable)")
    if not isinstance(sha256, str):
        return Unknown("unknown (checkpoint.pt has none)" if path.is_file() else "unknown (no checkpoint.pt)")
    return f"{sha256[:12]}..."


def plugins_row(run_dir: Path) -> str:
    """The plugin components the run trained with, and their versions, from summary.json's record."""
    summary = summary_of(run_dir)
    if not isinstance(summary.get("plugins"), dict):
        return unrecorded(run_dir, "summary.json has no plugins record")
    return with_earlier(summary, "plugins", plugins_text)


def plugins_text(plugins: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in sorted(plugins.items())) or "none (built-in components only)"


def software_row(run_dir: Path) -> str:
    """gptkit's code and torch, as an ablation compares them before pooling seeds (summary.json's record)."""
    summary = summary_of(run_dir)
    if not software_text(summary.get("software")):
        return unrecorded(run_dir, "from an older gptkit, which recorded none")
    return with_earlier(summary, "software", software_text)


def precision_row(run_dir: Path) -> str:
    """What train.precision resolved to (`auto` is bf16 on one machine, fp32 on another)."""
    summary = summary_of(run_dir)
    if not summary.get("precision"):
        return unrecorded(run_dir, "from an older gptkit")
    return with_earlier(summary, "precision", str, kind=str)


def with_earlier(summary: dict, key: str, text: Callable, kind: type = dict) -> str:
    """summary.json's record of `key` as `text` writes it, and the records of the run's earlier sessions that
    differ from it (a run resumed with other code, or on a device of other arithmetic), as an ablation
    checks them all before pooling seeds."""
    earlier = [text(r) for r in earlier_sessions(summary, key, kind)]
    return text(summary[key]) + (f" (earlier sessions: {'; '.join(earlier)})" if earlier else "")


def unrecorded(run_dir: Path, why: str) -> Unknown:
    """A record the run's summary.json lacks, and `why`; or, without a summary to read, that."""
    return Unknown(f"unknown ({why if summary_of(run_dir) else no_summary(run_dir)})")


PROVENANCE = {"text SHA-256": text_row, "plugins": plugins_row, "software": software_row, "precision": precision_row}


def differs(values: list) -> bool:
    """Whether the runs differ in a row, or may: what a run cannot tell is not the same as another's."""
    return len({repr(v) for v in values}) > 1 or len(values) > 1 and any(isinstance(v, Unknown) for v in values)


def show(value) -> str:
    """A recipe value in the differences table: a key one recipe lacks is not the same as null, and a
    string that would not read as itself in a cell (empty, padded, on several lines, or reading as null)
    is quoted, as JSON; a `|` would end the cell."""
    if value is ABSENT:
        return "(absent)"
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)  # as YAML
    if isinstance(value, str) and (value != value.strip() or not value.isprintable() or value in ("", "null", "(absent)")):
        text = json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|")


def short_names(dirs: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart, and their folders too where these differ: seed-0
    twice becomes rope/seed-0, alibi/seed-0; baseline/seed-1 beside rope/seed-2 keeps its arm."""
    parts = [Path(os.path.realpath(d)).parts for d in dirs]
    folders = len({p[:-1] for p in parts})
    for n in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-n:]) for p in parts]
        if len(set(names)) == len(names) and len({p[-n:-1] for p in parts}) == folders:
            return names
    return [str(d) for d in dirs]
