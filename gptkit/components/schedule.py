"""Learning-rate schedules: `factor(step)` multiplies `train.lr` at each (0-based) step."""

import math
import numbers
from abc import abstractmethod

import torch
from pydantic import Field

from ..registry import new_registry
from .base import Component, Params


class Schedule(Component):
    """Base class: built with `(params, total_steps)`."""

    def __init__(self, params: Params, total_steps: int):
        self.params = params
        self.total_steps = total_steps

    @abstractmethod
    def factor(self, step: int) -> float:
        """The multiplier of train.lr at `step` (0-based): a finite number >= 0 (a float, not a tensor)."""


schedule = new_registry("schedule", Schedule, "learning-rate schedule")


def is_factor(value) -> bool:
    """Whether `value` is what `factor(step)` must return: a finite real number >= 0, of any type that
    says it is one (numpy's too; a bool is a mistake)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value < math.inf


def factor_rule(value) -> str:
    """What a factor must be, said for `value`, which is not one: for a tensor, that it must be a
    Python number (taking a GPU tensor's value would wait for the GPU at every step)."""
    if isinstance(value, torch.Tensor):
        return "must be a Python number (a float), not a torch.Tensor: return its .item(), or compute it with math"
    return "must be a finite number >= 0"


class WarmupParams(Params):
    warmup_steps: int = Field(0, ge=0, description="steps of linear warm-up, from lr/warmup_steps at step 0 up to lr")


def warmup(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


@schedule.register("constant")
class Constant(Schedule):
    """Constant learning rate after an optional linear warm-up."""

    Params = WarmupParams

    def factor(self, step):
        return warmup(step, self.params.warmup_steps)


class CosineParams(WarmupParams):
    min_factor: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of train.lr")


@schedule.register("cosine")
class Cosine(Schedule):
    """Linear warm-up, then cosine decay to `min_factor` at the last step (Loshchilov & Hutter 2016,
    arXiv:1608.03983). The step after warm-up is the peak, even when it is the last one (warmup_steps
    = total - 1, or a one-step run): there is then no step left to decay over."""

    Params = CosineParams

    def factor(self, step):
        p = self.params
        if step < p.warmup_steps:
            return warmup(step, p.warmup_steps)
        # Steps run from 0 to total_steps - 1: the last one is where the decay ends.
        progress = (step - p.warmup_steps) / max(1, self.total_steps - 1 - p.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return p.min_factor + (1 - p.min_factor) * cosine
