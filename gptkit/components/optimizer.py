"""Optimizers. The trainer hands over parameter groups that already carry their weight decay."""

import torch
from pydantic import Field

from ..registry import new_registry
from .base import Component, Params


class Optimizer(Component):
    """Base class: built with `(params)`; `build(groups, lr)` returns a `torch.optim.Optimizer`."""

    def __init__(self, params: Params):
        self.params = params

    def build(self, groups: list[dict], lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError


optimizer = new_registry("optimizer", Optimizer, "optimizer for the model's parameters")


class AdamWParams(Params):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    fused: bool | None = Field(None, description="fused kernel; default: on wherever torch supports it")


@optimizer.register("adamw")
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2017, arXiv:1711.05101); torch's defaults."""

    Params = AdamWParams

    def build(self, groups, lr):
        p = self.params
        fused = p.fused
        if fused is None:  # one fused kernel per step beats a Python loop over tensors, on CPU and CUDA
            devices = {t.device.type for g in groups for t in g["params"]}
            fused = devices <= {"cpu", "cuda"}
        return torch.optim.AdamW(groups, lr=lr, betas=(p.beta1, p.beta2), eps=p.eps, fused=fused)
