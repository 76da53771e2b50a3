"""The Python API in one call, shaped like the original script's `train_model`."""

import json
from pathlib import Path

from .data.dataset import CharDataset
from .model import GPT
from .recipe import load_recipe
from .recipe.load import check_overrides
from .training import train
from .training.checkpoint import save_checkpoint


def train_model(config_path: str | Path, data_path: str | Path | None = None, epochs: int | None = None,
                save_path: str | Path | None = None, overrides: list[str] = (), runs_dir: str | Path = "runs",
                quiet: bool = False) -> tuple[GPT, CharDataset]:
    """Train from a recipe file and return `(model, dataset)`.

    `data_path` and `epochs` override the recipe; `overrides` takes `--set`-style "key=value"
    strings. The run folder is created under `runs_dir` as with `gptkit run`; `save_path`, if
    given, receives the final weights with the recipe and vocabulary (for `load_model` and
    `gptkit sample`; the run folder's checkpoint is the one to resume from).
    """
    overrides = list(check_overrides(overrides))
    if data_path is not None:
        overrides.append(f"data.path={json.dumps(str(Path(data_path).absolute()))}")  # quoted: '#' or ': ' in a path
    if epochs is not None:  # as given: the recipe refuses 0.5 with its own message, not int()'s 0
        overrides.append(f"train.epochs={json.dumps(getattr(epochs, 'item', lambda: epochs)())}")  # numpy too
    recipe = load_recipe(config_path, overrides)
    result = train(recipe, runs_dir=runs_dir, quiet=quiet)
    if save_path is not None:
        save_checkpoint(Path(save_path), result.model, recipe.to_dict(), result.dataset.itos, step=result.summary["steps"],
                        plugins=recipe.plugin_sources())
    return result.model, result.dataset
