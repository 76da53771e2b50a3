"""The optimizers' maths: AdamW (torch's fused kernel) and Muon, on a base with torch.optim.Optimizer's
surface (`param_groups`, `state`, `step`, `zero_grad`, `state_dict`, `load_state_dict`, same state
dict layout). Not torch.optim itself: its first optimizer imports torch._dynamo, which costs a process
70 MiB of memory and over a second of start-up that a short CPU run feels (README, "Performance")."""

import math
from collections import defaultdict
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from .device import native_bf16


class Optimizer:
    """Parameter groups and per-parameter state; subclasses write `step`."""

    def __init__(self, params: Iterable, defaults: dict):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        every = [p for g in self.param_groups for p in g["params"]]
        if len({id(p) for p in every}) != len(every):
            raise ValueError("a parameter appears in more than one group")
        self.state: defaultdict[Tensor, dict] = defaultdict(dict)

    def step(self) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def zero_grad(self, set_to_none: bool = True) -> None:
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if set_to_none:
            for p in params:
                p.grad = None
        elif params:  # in place, so gradients that are views of one flat buffer stay so
            torch._foreach_zero_([p.grad for p in params])

    def state_dict(self) -> dict:
        """torch's layout: parameters are numbered across groups in order."""
        index = {id(p): i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        groups = [{**g, "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        groups = saved["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"the state has {len(groups)} parameter groups, this optimizer {len(self.param_groups)}")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("the state's parameter groups differ in size from this optimizer's")
        params = {i: p for g, mine in zip(groups, self.param_groups) for i, p in zip(g["params"], mine["params"])}
        self.state = defaultdict(dict)
        for i, s in saved["state"].items():
            p = params[int(i)]
            self.state[p] = {k: self._placed(k, v, p) for k, v in s.items()}
        for g, mine in zip(groups, self.param_groups):
            mine.update({k: v for k, v in g.items() if k != "params"})

    def _placed(self, key: str, value, p: Tensor):
        """A copy of a saved state tensor (never shared with the caller's dict) on its parameter's
        device; buffers in the parameter's dtype."""
        if not isinstance(value, Tensor):
            return value
        if key == "step":
            return value.to(self._step_device(p), copy=True)
        return value.to(device=p.device, dtype=p.dtype if value.is_floating_point() else value.dtype, copy=True)

    def _step_device(self, p: Tensor) -> torch.device:
        return p.device

    def _with_grads(self, group: dict, new_state: Callable[[Tensor], dict]) -> list[Tensor]:
        """The group's parameters that have a gradient; a parameter's state is `new_state(p)` at first."""
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            if not self.state[p]:
                self.state[p] = new_state(p)
        return params


def indices_by(params: list[Tensor], key: Callable[[Tensor], tuple]) -> dict[tuple, list[int]]:
    """Indices of `params` grouped by `key`, so that each group can go to one batched kernel."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault(key(p), []).append(i)
    return groups


class AdamW(Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2017, arXiv:1711.05101), torch's maths:
    torch's fused kernel where `fused`, else the same steps as foreach operations."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, fused: bool = False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.fused = fused

    def _step_device(self, p: Tensor) -> torch.device:
        return p.device if self.fused else torch.device("cpu")  # the foreach maths reads it on the host

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = self._with_grads(group, lambda p: dict(
                step=torch.zeros((), dtype=torch.float32, device=self._step_device(p)),
                exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p)))
            for idx in indices_by(params, lambda p: (p.device, p.dtype)).values():
                ps = [params[i] for i in idx]
                states = [self.state[p] for p in ps]
                args = ([p.grad for p in ps], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                        [s["step"] for s in states])
                (self._fused if self.fused else self._foreach)(group, ps, *args)

    @staticmethod
    def _fused(group, params, grads, exp_avgs, exp_avg_sqs, steps):
        beta1, beta2 = group["betas"]
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1,
                            beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                            maximize=False)

    @staticmethod
    def _foreach(group, params, grads, exp_avgs, exp_avg_sqs, steps):
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        torch._foreach_add_(steps, 1)
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        t = [s.item() for s in steps]
        step_sizes = [-lr / (1 - beta1**n) for n in t]
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2**n) for n in t])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avgs, denom, step_sizes)


def orthogonalise(G: Tensor, steps: int, dtype: torch.dtype) -> Tensor:
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


class Muon(Optimizer):
    """Muon for 2-D parameters: B = lerp(B, grad, 1 - momentum); O = NS(lerp(grad, B, momentum))
    (Nesterov) or NS(B); then decoupled weight decay and p -= lr_adjusted * O. The maths of
    torch.optim.Muon (torch >= 2.9, whose implementation this follows), but matrices of the same shape
    are orthogonalised together, and on a CPU in float32: torch's bfloat16 Newton-Schulz was 3x slower
    on a CPU without bf16 units (README, "Performance")."""

    def __init__(self, params, lr: float, momentum: float, nesterov: bool, ns_steps: int, adjust_lr: str,
                 weight_decay: float = 0.0, ns_dtype: torch.dtype | None = None):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, adjust_lr=adjust_lr))
        self.ns_dtype = ns_dtype
        if any(p.dim() != 2 for g in self.param_groups for p in g["params"]):
            raise ValueError("Muon updates 2-D parameters only")

    @staticmethod
    def lr_ratio(shape: torch.Size, adjust_lr: str) -> float:
        A, B = shape
        return 0.2 * math.sqrt(max(A, B)) if adjust_lr == "match_rms_adamw" else math.sqrt(max(1.0, A / B))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = self._with_grads(group, lambda p: dict(momentum_buffer=torch.zeros_like(p)))
            bufs = [self.state[p]["momentum_buffer"] for p in params]
            grads = [p.grad for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"]) if group["nesterov"] else bufs
            for (shape, device), idx in indices_by(params, lambda p: (p.shape, p.device)).items():
                dtype = self.ns_dtype or (torch.bfloat16 if native_bf16(device) else torch.float32)
                O = orthogonalise(torch.stack([updates[i] for i in idx]), group["ns_steps"], dtype)
                lr = group["lr"] * self.lr_ratio(shape, group["adjust_lr"])
                for i, o in zip(idx, O):
                    params[i].mul_(1 - group["lr"] * group["weight_decay"]).add_(o, alpha=-lr)


class Chain:
    """Several optimizers stepped as one. `param_groups` lists all their groups (the same dicts), so
    the trainer's learning-rate schedule reaches every one."""

    def __init__(self, **optimizers):
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
