"""The trainer's optimizer: parameter groups by role, gradients in flat buffers, the step's learning
rate, and an optimizer component's object checked for every call the trainer makes of it. The
conformance kit sets optimizers up the same way."""

import inspect

import torch

from ..recipe.components import ComponentSpec
from ..registry import registry

# torch's own norms, which a component may hold (a per-head LayerNorm((n_head, head_dim)) has a 2-D gain)
TORCH_NORMS = (torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.GroupNorm)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Groups by role (see `gptkit.components.optimizer`). The module owning a parameter decides before
    its shape does: every parameter of a norm is a `vector` (never decayed), whatever its shape, and the
    positional component's tables (2-D and up) are `embedding`s, as are `nn.Embedding`s' and the
    `lm_head`'s. Otherwise gains and biases (under 2-D) are `vector`s, 2-D weights `matrix`, and larger
    tensors `embedding`s. Matrices and embeddings decay."""
    norms = _owned(model, (registry("norm").base, *TORCH_NORMS))
    tables = _owned(model, (registry("positional").base, torch.nn.Embedding))
    head = getattr(model, "lm_head", None)
    tables |= {id(p) for p in (head.parameters() if head is not None else ())}
    roles = {"matrix": [], "embedding": [], "vector": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in norms or p.dim() < 2:
            roles["vector"].append(p)
        else:
            roles["embedding" if id(p) in tables or p.dim() > 2 else "matrix"].append(p)
    return [{"params": ps, "weight_decay": 0.0 if role == "vector" else weight_decay, "role": role}
            for role, ps in roles.items()]


def _owned(model: torch.nn.Module, types: tuple[type, ...]) -> set[int]:
    """The ids of every parameter of `model`'s modules of `types`, their submodules' included."""
    return {id(p) for m in model.modules() if isinstance(m, types) for p in m.parameters()}


def flat_gradients(model: torch.nn.Module) -> None:
    """Point every trainable parameter's `.grad` at its slice of one zeroed buffer per (device, dtype);
    backward accumulates into them and the trainer zeroes them in place (DDP copies its averaged
    buckets into them). A few long-lived allocations instead of a tensor per parameter freed and
    re-made each step among the activations: on CPU that churn fragments the heap (about 9 MB of peak
    memory on recipes/tinyshakespeare-fast.yaml)."""
    groups: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), params in groups.items():
        flat = torch.zeros(sum(p.numel() for p in params), device=device, dtype=dtype)
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p)
            offset += p.numel()


def set_lr(optimizer, lr: float) -> None:
    """The step's learning rate in every group, times the group's `lr_scale` (Muon's own scale)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# Every call the trainer makes of the object an optimizer component's build(groups, lr) returns (as
# README's optimizer row says), besides setting each of its param_groups' "lr": (call, args, kwargs).
OPTIMIZER_CALLS = [("step()", (), {}), ("zero_grad(set_to_none=False)", (), {"set_to_none": False}),
                   ("state_dict()", (), {}), ("load_state_dict(state)", ({},), {})]


def build_optimizer(spec: ComponentSpec, groups: list[dict], lr: float):
    """The optimizer `spec` names over `groups`, checked for each call the trainer will make of it: a
    method that is missing or takes other arguments is the component's error now, not a traceback at
    the first step."""
    component = spec.build()
    with spec.blamed("build(groups, lr)"):
        optimizer = component.build(groups, lr)
    built = getattr(optimizer, "param_groups", None)
    if not (isinstance(built, list) and all(isinstance(g, dict) for g in built)):
        raise spec.error(f"build(groups, lr) returned {type(optimizer).__name__}, whose param_groups is not a list "
                         "of dicts")
    for call, args, kwargs in OPTIMIZER_CALLS:
        method = getattr(optimizer, call.split("(")[0], None)
        try:
            inspect.signature(method).bind(*args, **kwargs)
        except TypeError as e:  # not callable, or the arguments do not fit
            reason = "has no such method" if not callable(method) else e
            raise spec.error(f"build(groups, lr) returned {type(optimizer).__name__}, which the trainer cannot call "
                             f"as {call}: {reason}") from None
        except ValueError:  # a method without a signature to read (written in C): taken on trust
            pass
    return optimizer
