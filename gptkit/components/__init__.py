"""Built-in components, one module per kind. Importing this package registers them all.

It is also what a plugin imports: each kind's base class, `Params` for a component's own typed
parameters, `GPTConfig` for the model sizes it is built with, and `register` for components
defined in a local file that a recipe lists under `imports:`.
"""

from . import attention, corpus, feedforward, norm, optimizer, positional, schedule  # noqa: F401
from .attention import Attention, AttentionParams, KVCache, causal_mask
from .base import Component, GPTConfig, Params
from .corpus import Corpus
from .feedforward import FeedForward
from .norm import Norm
from .optimizer import Optimizer
from .positional import Positional, past_distance
from .schedule import Schedule


def register(kind: str, name: str):
    """Decorator registering a class as component `name` of `kind`, for local files:
    `@register("norm", "unitnorm")`. Installed packages declare entry points instead."""
    from ..registry import registry

    return registry(kind).register(name)


__all__ = ["Attention", "AttentionParams", "Component", "Corpus", "FeedForward", "GPTConfig", "KVCache", "Norm",
           "Optimizer", "Params", "Positional", "Schedule", "causal_mask", "past_distance",
           "register"]
