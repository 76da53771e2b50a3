"""The device a recipe or command names, and what it can do fast, for the choices made by `auto`
settings (training, bench, optimizers)."""

import contextlib
import functools
import re

import torch

from .errors import UserError
from .ranks import under_torchrun

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """The torch device `name` (auto, cpu, cuda, cuda:N or mps) names; `what` is where it was given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise UserError(f"{what}: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"{what}: {name} was asked for, but no such CUDA device is visible; use auto or cpu")
    if device.type == "cuda" and device.index is not None and not under_torchrun():
        torch.cuda.set_device(device)  # CUDA events and autocast's checks use the current device (torchrun's processes set their own)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{what}: mps was asked for, but it is not available here; use auto or cpu")
    return device


@functools.cache  # asked every micro-batch: a capability query per call would cost host time
def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls and attention kernels run natively: CUDA from Ampere (8.0) on. Earlier GPUs
    emulate bf16 (and their fused attention kernels refuse it), which is slower than fp32."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def use_bf16(precision: str, device: torch.device) -> bool:
    """A recipe's `precision` (auto, fp32 or bf16) on `device`: auto means bf16 where it is native."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def arithmetic(precision: str, device: torch.device) -> str:
    """What a recipe's `precision` resolves to on `device`, as a run's summary.json records it."""
    return "bf16 autocast" if use_bf16(precision, device) else "fp32"


AUTOCAST_DEVICES = ("cpu", "cuda", "mps", "xpu")


@contextlib.contextmanager
def torch_defaults():
    """Within it, torch's defaults as gptkit builds and trains models under, whatever a notebook set
    before (set_default_dtype(torch.float64), set_default_device, set_grad_enabled(False), inference
    mode, an autocast block), and put back after: float32 weights and arithmetic (the precision is the
    recipe's train.precision alone), tensors on the CPU unless placed, and gradients on."""
    dtype, device = torch.get_default_dtype(), torch.get_default_device()
    torch.set_default_dtype(torch.float32)
    if device.type != "cpu":  # (not `with torch.device("cpu")`: its mode costs every eager op 1.5 us more)
        torch.set_default_device(None)
    try:
        with torch.inference_mode(False), torch.enable_grad(), contextlib.ExitStack() as stack:
            for kind in AUTOCAST_DEVICES:
                if torch.is_autocast_enabled(kind):
                    stack.enter_context(torch.autocast(kind, enabled=False))
            yield
    finally:
        torch.set_default_dtype(dtype)
        if device.type != "cpu":
            torch.set_default_device(device)


@contextlib.contextmanager
def keep_random_state(device: torch.device | None = None):
    """torch.random.fork_rng over the CPU and `device` if it is a GPU: within it, seeding leaves the
    caller's random state as it was afterwards. Only the GPU in use: reading every GPU's state would
    start a CUDA context on each, in every process of a multi-GPU job (torch.manual_seed seeds the
    others lazily, and their state is not put back). On Apple's GPU, whose generator torch.manual_seed
    seeds too and fork_rng leaves alone, its state is put back as well."""
    with torch.random.fork_rng([device] if device is not None and device.type == "cuda" else []):
        if device is None or device.type != "mps":
            yield
            return
        state = torch.mps.get_rng_state()
        try:
            yield
        finally:
            torch.mps.set_rng_state(state)
