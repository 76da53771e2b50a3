"""gptkit: GPT language models assembled from named, swappable components.

    from gptkit import train_model
    model, dataset = train_model("recipes/shakespeare-cpu.yaml", epochs=1)
"""

import importlib
import importlib.util
import sys
import types
import warnings
from typing import TYPE_CHECKING

# torch warns on import when numpy is not installed; gptkit never converts tensors to numpy arrays.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

# Imported on first use, so that `import gptkit.<module>` costs only what that module needs, and the
# command line can answer a Ctrl-C while torch is still importing (see _entry.py).
_EXPORTS = {
    "train_model": ".api",
    "GPTConfig": ".components", "Params": ".components",
    "UserError": ".errors", "GptkitWarning": ".errors", "RunStopped": ".errors", "Interrupted": ".errors", "RunFailed": ".errors",
    "Diverged": ".errors",
    "ComponentError": ".errors", "RecipeError": ".recipe.load", "RegistryError": ".registry",
    "Vocab": ".data.vocab",
    "GPT": ".model", "Block": ".model", "build_model": ".model",
    "Recipe": ".recipe", "load_recipe": ".recipe",
    "generate": ".sampling", "sample": ".sampling", "text_loss": ".scoring",
    "load_checkpoint": ".training", "train": ".training", "RunResult": ".training.run",
    "load_model": ".training.checkpoint", "PluginChangedWarning": ".training.checkpoint",
    "registry": ".registry",
}
__all__ = sorted(_EXPORTS)


class _Package(types.ModuleType):
    """gptkit itself, whose `registry` stays the function when the submodule of that name is imported
    (the import system then sets the package's attribute to the submodule)."""

    def __setattr__(self, name, value):
        if name == "registry" and isinstance(value, types.ModuleType):
            value = value.registry
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # what the names are, for type checkers and editors
    from .api import train_model
    from .components import GPTConfig, Params
    from .data.vocab import Vocab
    from .errors import ComponentError, Diverged, GptkitWarning, Interrupted, RunFailed, RunStopped, UserError
    from .model import GPT, Block, build_model
    from .recipe import Recipe, load_recipe
    from .recipe.load import RecipeError
    from .registry import RegistryError, registry
    from .sampling import generate, sample
    from .scoring import text_loss
    from .training import load_checkpoint, train
    from .training.checkpoint import PluginChangedWarning, load_model
    from .training.run import RunResult


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: gptkit.model
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'gptkit' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
