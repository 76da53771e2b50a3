"""Position-wise feedforward networks: (B, T, C) -> (B, T, C).

Hidden sizes are chosen so both built-ins have about the same parameters: `mlp` uses 4 * n_embd
(two matrices, 8 * n_embd^2 weights); `swiglu` has three matrices, so it uses 2/3 of that,
8/3 * n_embd rounded up to a multiple of `multiple_of` (LLaMA's rule).
"""

from abc import abstractmethod

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..registry import new_registry
from .base import Component, GPTConfig, Params, dropout_layer


class FeedForwardParams(Params):
    hidden: int | None = Field(None, gt=0, description="hidden width; default 4 * n_embd, or 8/3 * n_embd for a "
                               "gated unit (about as many weights)")
    bias: bool = Field(False, description="learn biases in the linear layers")


class FeedForward(Component, nn.Module):
    """Base class: built with `(config, params)`. Output projection named `c_proj` (scaled init).
    Its `Params` are empty: a subclass declares the parameters it reads (the built-ins' `hidden` and
    `bias` are theirs), so that a recipe cannot set one that nothing reads."""

    def __init__(self, config: GPTConfig, params: Params):
        super().__init__()
        self.params = params

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), each position on its own."""


feedforward = new_registry("feedforward", FeedForward, "position-wise feedforward network")


@feedforward.register("mlp")
class MLP(FeedForward):
    """Two-layer perceptron with GELU, hidden 4 * n_embd (GPT-2)."""

    Params = FeedForwardParams

    def __init__(self, config: GPTConfig, params: FeedForwardParams):
        super().__init__(config, params)
        hidden = params.hidden or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=params.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=params.bias)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class SwiGLUParams(FeedForwardParams):
    multiple_of: int = Field(8, gt=0, description="round the default hidden width up to a multiple of this")


@feedforward.register("swiglu")
class SwiGLU(FeedForward):
    """Gated linear unit with a SiLU gate (Shazeer 2020, arXiv:2002.05202); hidden 8/3 * n_embd."""

    Params = SwiGLUParams

    def __init__(self, config: GPTConfig, params: SwiGLUParams):
        super().__init__(config, params)
        m = params.multiple_of
        hidden = params.hidden or m * -(-8 * config.n_embd // (3 * m))  # ceil to a multiple of m
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=params.bias)  # gate and value in one matmul
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=params.bias)
        self.dropout = dropout_layer(config.dropout)

    def forward(self, x):
        gate, value = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.silu(gate) * value))
