"""Built-in components, one module per kind. Importing this package registers them all."""

from . import attention, corpus, feedforward, norm, optimizer, positional, schedule  # noqa: F401
from .base import Component, GPTConfig, Params

__all__ = ["Component", "GPTConfig", "Params"]
