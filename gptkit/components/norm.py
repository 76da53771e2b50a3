"""Normalisation layers: `norm(x)` over the last (channel) dimension."""

from abc import abstractmethod

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..registry import new_registry
from .base import Component, GPTConfig, Params


class Norm(Component, nn.Module):
    """Base class: built with `(config, params)`; maps (B, T, C) to (B, T, C)."""

    def __init__(self, config: GPTConfig, params: Params):
        super().__init__()
        self.params = params

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C), over the last dimension."""


norm = new_registry("norm", Norm, "normalisation layer used before attention, feedforward and the LM head")


class EpsParams(Params):
    eps: float = Field(1e-5, gt=0, description="added under the square root for numerical stability")


@norm.register("rmsnorm")
class RMSNorm(Norm):
    """Root-mean-square norm with a learned gain, no centring (Zhang & Sennrich 2019, arXiv:1910.07467)."""

    Params = EpsParams

    def __init__(self, config: GPTConfig, params: EpsParams):
        super().__init__(config, params)
        self.weight = nn.Parameter(torch.ones(config.n_embd))

    def forward(self, x):
        return F.rms_norm(x, self.weight.shape, self.weight, self.params.eps)


class LayerNormParams(EpsParams):
    bias: bool = Field(True, description="learn an additive bias")


@norm.register("layernorm")
class LayerNorm(Norm):
    """Layer normalisation with optional bias (Ba et al. 2016, arXiv:1607.06450)."""

    Params = LayerNormParams

    def __init__(self, config: GPTConfig, params: LayerNormParams):
        super().__init__(config, params)
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd)) if params.bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.params.eps)
