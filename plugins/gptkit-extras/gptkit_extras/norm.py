"""Normalisation variants: ScaleNorm, and Dynamic Tanh (a normalisation-free replacement)."""

import math

import torch
from gptkit.components import GPTConfig, Norm, Params
from pydantic import Field
from torch import nn


class ScaleNormParams(Params):
    eps: float = Field(1e-5, gt=0, description="lower bound on the norm, for numerical stability")


class ScaleNorm(Norm):
    """Scale each vector to a single learned length g, initialised to sqrt(n_embd) (Nguyen & Salazar
    2019, arXiv:1910.05895)."""

    Params = ScaleNormParams

    def __init__(self, config: GPTConfig, params: ScaleNormParams):
        super().__init__(config, params)
        self.g = nn.Parameter(torch.tensor(math.sqrt(config.n_embd)))

    def forward(self, x):
        return self.g * x / x.norm(dim=-1, keepdim=True).clamp(min=self.params.eps)


class DyTParams(Params):
    alpha: float = Field(0.5, gt=0, description="initial input scale inside the tanh")


class DynamicTanh(Norm):
    """weight * tanh(alpha * x) + bias with a learned scalar alpha: no statistics at all (Zhu et al.
    2025, arXiv:2503.10622)."""

    Params = DyTParams

    def __init__(self, config: GPTConfig, params: DyTParams):
        super().__init__(config, params)
        self.alpha = nn.Parameter(torch.tensor(params.alpha))
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.bias = nn.Parameter(torch.zeros(config.n_embd))

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias
