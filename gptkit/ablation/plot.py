"""Validation loss against tokens, one line per arm (the mean over seeds) with a min-max band.

matplotlib is optional (`pip install 'gptkit[plot]'`); without it nothing is drawn and the caller
prints a one-line hint.
"""

from pathlib import Path

from ..io import atomic_write

HINT = "pip install 'gptkit[plot]'  (or: pip install matplotlib)"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot_curves(curves: dict[str, list[list[tuple[int, float]]]], path: Path, title: str) -> bool:
    """Draw `curves` ({label: [one [(tokens, val_loss)] per seed]}) into the PNG `path`.
    False, drawing nothing, when matplotlib is missing."""
    if not have_matplotlib():
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for label, runs in curves.items():
        runs = [r for r in runs if r]
        if not runs:
            continue
        common = sorted(set.intersection(*(set(t for t, _ in r) for r in runs)))  # evaluated by every seed
        points = [[dict(r)[t] for r in runs] for t in common]
        (line,) = ax.plot(common, [sum(p) / len(p) for p in points], label=f"{label} (n={len(runs)})")
        if len(runs) > 1:
            ax.fill_between(common, [min(p) for p in points], [max(p) for p in points], color=line.get_color(),
                            alpha=0.2, linewidth=0)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)
    return True
