"""Optimizers. The trainer hands over parameter groups that already carry their weight decay and a
`role`: "matrix" (2-D weights inside the blocks), "embedding" (token/position tables, the LM head, any
tensor of more than two dimensions) or "vector" (gains and biases). An optimizer may treat roles
differently, as Muon does."""

import math
from typing import Literal

import torch
from pydantic import Field

from ..registry import new_registry
from .base import Component, Params


class Optimizer(Component):
    """Base class: built with `(params)`; `build(groups, lr)` returns an object with torch's optimizer
    surface (`param_groups`, `step`, `zero_grad`, `state_dict`, `load_state_dict`)."""

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


def adamw(groups: list[dict], lr: float, p: AdamWParams) -> torch.optim.AdamW:
    fused = p.fused
    if fused is None:  # one fused kernel per step beats a Python loop over tensors, on CPU and CUDA
        devices = {t.device.type for g in groups for t in g["params"]}
        fused = devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(groups, lr=lr, betas=(p.beta1, p.beta2), eps=p.eps, fused=fused)


@optimizer.register("adamw")
class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2017, arXiv:1711.05101); torch's defaults."""

    Params = AdamWParams

    def build(self, groups, lr):
        return adamw(groups, lr, self.params)


class Chain:
    """Several torch optimizers stepped as one. `param_groups` lists all their groups (the same dicts),
    so the trainer's learning-rate schedule reaches every one."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers.values() for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers.values():
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: o.state_dict() for name, o in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, expected {sorted(self.optimizers)}")
        for name, o in self.optimizers.items():
            o.load_state_dict(state[name])


def orthogonalise(G: torch.Tensor, steps: int, dtype: torch.dtype) -> torch.Tensor:
    """Newton-Schulz iterations taking each (A, B) matrix of G (n, A, B) close to the nearest
    semi-orthogonal one (singular values near 1), with Jordan's quintic coefficients."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)  # spectral norm <= 1
    for _ in range(steps):
        gram = X @ X.mT  # (n, A, A), A the smaller side
        X = torch.baddbmm(X, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), X, beta=a)
    return (X.mT if tall else X).to(G.dtype)


class MuonUpdate(torch.optim.Optimizer):
    """Muon for 2-D parameters: B = lerp(B, grad, 1 - momentum); O = NS(lerp(grad, B, momentum))
    (Nesterov) or NS(B); then decoupled weight decay and p -= lr_adjusted * O. The maths of
    torch.optim.Muon (torch >= 2.9, whose implementation this follows), but matrices of the same shape
    are orthogonalised together, and on a CPU in float32: torch's bfloat16 Newton-Schulz was 3x slower
    on a CPU without bf16 units (README, "Performance")."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, ns_steps: int, adjust_lr: str,
                 weight_decay: float = 0.0, ns_dtype: torch.dtype | None = None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, adjust_lr=adjust_lr)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon updates 2-D parameters only")

    @staticmethod
    def lr_ratio(shape: torch.Size, adjust_lr: str) -> float:
        A, B = shape
        return 0.2 * math.sqrt(max(A, B)) if adjust_lr == "match_rms_adamw" else math.sqrt(max(1.0, A / B))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = [p.grad for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
            by_shape: dict[tuple, list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault((p.shape, p.device), []).append(i)
            for (shape, device), idx in by_shape.items():
                dtype = self.ns_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
                O = orthogonalise(torch.stack([updates[i] for i in idx]), group["ns_steps"], dtype)
                lr = group["lr"] * self.lr_ratio(shape, group["adjust_lr"])
                for i, o in zip(idx, O):
                    params[i].mul_(1 - group["lr"] * group["weight_decay"]).add_(o, alpha=-lr)
        return loss


class MuonParams(AdamWParams):
    momentum: float = Field(0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(5, ge=1, le=20, description="Newton-Schulz iterations")
    adjust_lr: Literal["match_rms_adamw", "original"] = Field(
        "match_rms_adamw", description="match_rms_adamw: updates as large as AdamW's, so train.lr serves both")
    lr_scale: float = Field(1.0, gt=0, description="Muon's learning rate is train.lr times this")
    ns_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Newton-Schulz precision; auto: bf16 on CUDA, fp32 elsewhere")


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
        muon = MuonUpdate(matrices, lr=lr * p.lr_scale, momentum=p.momentum, nesterov=p.nesterov,
                          ns_steps=p.ns_steps, adjust_lr=p.adjust_lr, ns_dtype=ns_dtype)
        return Chain(muon=muon, adamw=adamw(rest, lr, p))
