"""The Python API in one call, shaped like the original script's `train_model`."""

import copy
import json
import os
from pathlib import Path

from .data.dataset import CharDataset
from .errors import UserError
from .io import cannot_make_folder, check_path_argument, home_path
from .model import GPT
from .recipe import Recipe, load_recipe, validate
from .recipe.load import apply_overrides, check_overrides, named_by_overrides, recipe_device
from .training import train
from .training.checkpoint import save_checkpoint, saved_model


def train_model(config_path: str | Path | Recipe | dict, data_path: str | Path | None = None, epochs: int | None = None,
                save_path: str | Path | None = None, overrides: list[str] = (), runs_dir: str | Path = "runs",
                quiet: bool = False) -> tuple[GPT, CharDataset]:
    """Train from a recipe file, a Recipe already loaded (`load_recipe`), or a dict of a recipe's contents
    (as `yaml.safe_load` reads a file), and return `(model, dataset)`. A dict is validated as
    `gptkit.recipe.validate` validates it: its `imports` run, and its relative paths are relative to the
    working directory.

    `data_path` and `epochs` override the recipe; `overrides` takes `--set`-style "key=value"
    strings (a Recipe or dict is validated again with them, and left as it was). The run folder is created
    under `runs_dir` as with `gptkit run`; `save_path`, if given, receives the final weights with the
    recipe and vocabulary (for `load_model` and `gptkit sample`; the run folder's checkpoint is the
    one to resume from). Under torchrun, rank 0 alone writes both. `gptkit.train` returns the run
    folder and its figures (summary.json's) as well.
    """
    overrides = list(check_overrides(overrides))
    for name, value in (("data_path", data_path), ("save_path", save_path), ("runs_dir", runs_dir)):
        check_path_argument(name, value, optional=name != "runs_dir")
    origins = {}  # data_path and epochs are named in errors as the arguments they were, not as overrides
    if data_path is not None:
        path = home_path(data_path, f"data_path={str(data_path)!r}")  # ~/text.txt, as a recipe's paths may say
        if not path.is_file():  # said as the argument it is, not as the recipe's data.path
            raise UserError(f"data_path={str(data_path)!r}: file not found{' (it is a folder)' if path.is_dir() else ''}")
        text = f"data.path={json.dumps(str(path.absolute()))}"  # quoted: '#' or ': ' in a path
        overrides.append(text)
        origins[text] = f"data_path={str(data_path)!r}"
    if epochs is not None:  # as given: the recipe refuses 0.5 with its own message, not int()'s 0
        text = f"train.epochs={json.dumps(getattr(epochs, 'item', lambda: epochs)())}"  # numpy too
        overrides.append(text)
        origins[text] = f"epochs={epochs!r}"
    if isinstance(config_path, Recipe):
        recipe = _overridden(config_path.to_dict(), f"recipe {config_path.name}", overrides, origins) \
            if overrides else config_path
    elif isinstance(config_path, dict):  # copied: the caller's dict is left as it was
        recipe = _overridden(copy.deepcopy(config_path), "recipe", overrides, origins)
    elif isinstance(config_path, str | os.PathLike):
        recipe = load_recipe(config_path, overrides, origins)
    else:
        raise TypeError(f"train_model takes a recipe file's path, a Recipe or a dict, got {type(config_path).__name__}")
    if save_path is not None:
        save_path = home_path(save_path, f"save_path={str(save_path)!r}")
        check_save_path(save_path, recipe)
    recipe_device(recipe, overrides, origins)  # a device that is not here, named by its override if one set it
    file = config_path if isinstance(config_path, str | os.PathLike) else None  # (not a Recipe, maybe changed since)
    with named_by_overrides(overrides, origins, file):
        result = train(recipe, runs_dir=runs_dir, quiet=quiet)
    if save_path is not None and result.run_dir is not None:  # None: a torchrun rank but 0, which writes nothing
        try:
            save_checkpoint(save_path, result.model, recipe.to_dict(), result.dataset.itos, parents=True,
                            step=result.summary["steps"], plugins=recipe.plugin_sources())
        except OSError as e:  # a full disk: the run is saved all the same
            raise UserError(f"save_path {save_path} could not be written ({e.strerror or e}); the run finished and is "
                            f"saved in {result.run_dir}: load_model({str(result.run_dir)!r}) loads it") from None
    return result.model, result.dataset


def _overridden(data: dict, origin: str, overrides: list[str], origins: dict[str, str]) -> Recipe:
    """The recipe `data` holds with `overrides` applied (to `data`), validated as `load_recipe` validates a
    file's, but for relative paths, which are relative to the working directory (a Recipe's are absolute)."""
    return validate(data, origin=origin, overrides=apply_overrides(data, overrides, origins))


def check_save_path(path: Path, recipe: Recipe) -> None:
    """Before training, not after it: a save_path that cannot be written, or that holds anything but a model
    an earlier train_model saved (a recipe, a text, a run's checkpoint), or will (the text a corpus is to
    make at `recipe`'s data.path, a file it imports), is one error."""
    inputs = [("the recipe's data.path", recipe.data.path), *(("a file the recipe imports", f) for f in recipe.imports)]
    for what, used in inputs:
        if os.path.abspath(path) == os.path.abspath(used):
            raise UserError(f"save_path {path} is {what}, which training reads; give another file name, e.g. "
                            f"{path.with_name('model.pt')}")
    if path.is_dir():
        raise UserError(f"save_path {path} is a folder; give a file name, e.g. {path / 'model.pt'}")
    if path.name == "checkpoint.pt" and (path.parent / "summary.json").is_file():
        raise UserError(f"save_path {path} is the checkpoint of the run in {path.parent}, which gptkit run --resume "
                        f"goes on from; give another file name, e.g. {path.with_name('model.pt')}")
    if path.exists() and not (path.is_file() and saved_model(path)):  # (read only a file: a FIFO would block)
        raise UserError(f"save_path {path} exists and is not a model saved by train_model, and would be "
                        "overwritten; give another file name, or delete it first")
    problem = cannot_make_folder(path.parent)  # a missing folder is made
    if problem:
        raise UserError(f"save_path {path} cannot be written: {problem}")
