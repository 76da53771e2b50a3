"""Validation loss against tokens, one line per arm (the mean over seeds) with a min-max band.

matplotlib is optional (`pip install matplotlib`); without it nothing is drawn and the caller
prints a one-line hint.
"""

import re
import warnings
from pathlib import Path

import click

from ..errors import one_line
from ..io import atomic_write

NO_SHARED_STEP = "its seeds share no evaluation step"
HINT = "pip install matplotlib (or, in gptkit's checkout, pip install -e '.[plot]')"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def image_formats() -> list[str]:
    """The file extensions matplotlib can write here (it must be installed): png, pdf, svg, jpg, ..."""
    import shutil

    import matplotlib
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if not shutil.which(matplotlib.rcParams["pgf.texsystem"]):  # pgf is listed, but needs a TeX install to draw
        formats.pop("pgf", None)
    return list(formats)


def image_format(path: Path) -> str:
    """The format `path`'s extension names ("pdf"), or a ValueError listing those matplotlib writes."""
    fmt = path.suffix.lower().removeprefix(".")
    formats = image_formats()
    if fmt not in formats:
        given = f"its extension .{fmt} is not an image format matplotlib writes" if fmt else "it has no extension"
        raise ValueError(f"{given}; end it with one of {', '.join('.' + f for f in formats)}")
    return fmt


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str,
                notes: dict[str, str] | None = None, reference: str | None = None) -> bool:
    """Draw `curves` ({label: [one [(tokens, val_loss)] per seed]}) into `path`, in the format its
    extension names (image_format), each label followed by its number of seeds and its `notes` entry
    ("diverged on 5/8 seeds"), if any; a label with no curve but a note is named in the legend alone. A
    label whose seeds share no evaluation step has no mean to draw: the legend and a warning on stderr
    name it. The `reference` label (an ablation's baseline) is drawn black and dashed, over the others,
    which would otherwise hide it where they match it. False, drawing nothing, when matplotlib is missing."""
    if not have_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    left_out = []
    for label, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            note = (notes or {}).get(label)
            if note:  # every seed diverged or failed: nothing to draw, and the legend says so (the table says why)
                ax.plot([], [], " ", label=f"{label}: not drawn, {note if len(note) <= 60 else note[:59] + '…'}")
            continue
        common = sorted(set.intersection(*(set(t for t, _ in r) for r in runs)))  # evaluated by every seed
        if not common:  # a mean over the seeds has no point to stand on
            left_out.append(f"{label} ({NO_SHARED_STEP})")
            ax.plot([], [], " ", label=f"{label}: not drawn, {NO_SHARED_STEP}")  # the image names it too
            continue
        points = [[dict(r)[t] for r in runs] for t in common]
        lo, hi = [min(p) for p in points], [max(p) for p in points]
        note = (notes or {}).get(label)
        # markers: a run evaluated only at its end has one point, which a line alone does not show
        style = dict(color="black", linestyle="--", zorder=3) if label == reference else {}
        (line,) = ax.plot(common, [sum(p) / len(p) for p in points], marker="o", markersize=3,
                          label=f"{label} (n={len(runs)}{f'; {note}' if note else ''})", **style)
        if len(runs) > 1 and len(common) > 1:
            ax.fill_between(common, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
        elif len(runs) > 1:  # a band one point wide has no area: show the spread as a bar
            ax.vlines(common, lo, hi, color=line.get_color(), alpha=0.4)
    if left_out:
        click.echo(f"warning: {path} leaves out {', '.join(left_out)}", err=True)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # the reference first, as the table names it first
    first = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(f"{reference} (n="))
    ax.legend([handles[i] for i in first], [labels[i] for i in first], fontsize="small", framealpha=0.8)
    for text in fig.findobj(matplotlib.text.Text):  # labels are values and names: a `$` in one starts no maths
        text.set_parse_math(False)
    fmt = image_format(path)  # savefig cannot see the name through a file object: it would write PNG
    with warnings.catch_warnings(record=True) as said:  # matplotlib's, each several lines: said once, below
        warnings.simplefilter("always")
        fig.tight_layout()
        atomic_write(path, lambda f: fig.savefig(f, format=fmt), parents=True)
    plt.close(fig)
    glyphs = sorted({m[1] for w in said if (m := re.search(r"Glyph \d+ \((.+?)\) missing", str(w.message)))})
    if glyphs:  # run folders named in another script than the font's
        click.echo(f"warning: {path}: its font has no {', '.join(glyphs[:8])}{' ...' if len(glyphs) > 8 else ''}, "
                   "drawn as boxes in the legend", err=True)
    for w in said:
        if not re.search(r"Glyph \d+ .* missing", str(w.message)):
            click.echo(f"warning: {path}: {one_line(w.message)}", err=True)
    return True
