"""Optimizers. The trainer hands over parameter groups that already carry their weight decay and a
`role`: "matrix" (2-D weights inside the blocks' attention and feedforward), "embedding" (token and
position tables, the LM head, any tensor of more than two dimensions) or "vector" (gains and biases,
and every parameter of a norm, whatever its shape). An optimizer may treat roles differently, as Muon
does."""

from abc import abstractmethod
from typing import Literal

import torch
from pydantic import Field

from .. import optim
from ..registry import new_registry
from .base import Component, Params


class Optimizer(Component):
    """Base class: built with `(params)`; `build(groups, lr)` returns an object with torch's optimizer
    surface, as the trainer calls it: `param_groups` (a list of dicts), `step()`,
    `zero_grad(set_to_none=False)`, `state_dict()` and `load_state_dict(state)`."""

    def __init__(self, params: Params):
        self.params = params

    @abstractmethod
    def build(self, groups: list[dict], lr: float) -> optim.Optimizer:
        """The optimizer over the trainer's parameter groups (each with `params`, `weight_decay`, `role`)."""


optimizer = new_registry("optimizer", Optimizer, "optimizer for the model's parameters")


class AdamWParams(Params):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    fused: bool | None = Field(None, description="fused kernel; default: on for parameters on a CPU or CUDA device")


def adamw(groups: list[dict], lr: float, p: AdamWParams) -> optim.AdamW:
    fused = p.fused
    if fused is None:  # one fused kernel per step beats a Python loop over tensors, on CPU and CUDA
        devices = {t.device.type for g in groups for t in g["params"]}
        fused = devices <= {"cpu", "cuda"}
    return optim.AdamW(groups, lr=lr, betas=(p.beta1, p.beta2), eps=p.eps, fused=fused)


@optimizer.register("adamw")
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2017, arXiv:1711.05101); torch's defaults."""

    Params = AdamWParams

    def build(self, groups, lr):
        return adamw(groups, lr, self.params)


class MuonParams(AdamWParams):
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw", description="match_rms_adamw: updates as large as AdamW's, so train.lr serves both")
    lr_scale: float = Field(1.0, gt=0, description="Muon's learning rate is train.lr times this")
    ns_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Newton-Schulz precision; auto: bf16 on a CUDA GPU with native bf16 (Ampere on), fp32 elsewhere")


@optimizer.register("muon")
class Muon(Optimizer):
    """Muon (Jordan et al. 2024; Liu et al. 2025, arXiv:2502.16982) for the blocks' weight matrices: the
    momentum of each gradient is orthogonalised by Newton-Schulz iterations. Embeddings, the LM head,
    gains and biases keep AdamW (its betas and eps are this component's too), as Muon prescribes."""

    Params = MuonParams

    def build(self, groups, lr):
        p = self.params
        matrices = [dict(g, lr_scale=p.lr_scale) for g in groups if g.get("role") == "matrix" and g["params"]]
        rest = [g for g in groups if g.get("role") != "matrix"]
        if not matrices:
            return adamw(rest, lr, p)
        ns_dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[p.ns_precision]
        muon = optim.Muon(matrices, lr=lr * p.lr_scale, momentum=p.momentum, nesterov=p.nesterov,
                          ns_steps=p.ns_steps, adjust_lr=p.adjust_lr, ns_dtype=ns_dtype)
        return optim.Chain(muon=muon, adamw=adamw(rest, lr, p))
