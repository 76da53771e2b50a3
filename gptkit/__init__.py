"""gptkit: GPT language models assembled from named, swappable components.

    from gptkit import train_model
    model, dataset = train_model("recipes/shakespeare-cpu.yaml", epochs=1)
"""

import warnings

# torch warns on import when numpy is not installed; gptkit never converts tensors to numpy arrays.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from .api import train_model
from .components import GPTConfig, Params
from .errors import UserError
from .model import GPT, Block, build_model
from .recipe import Recipe, load_recipe
from .registry import registry
from .sampling import generate, sample
from .training import load_checkpoint, train
from .training.checkpoint import load_model

__all__ = ["GPT", "Block", "GPTConfig", "Params", "Recipe", "UserError", "build_model", "generate",
           "load_checkpoint", "load_model", "load_recipe", "registry", "sample", "train", "train_model"]
