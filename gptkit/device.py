"""What the device can do fast, for the choices made by `auto` settings (training, bench, optimizers)."""

import functools

import torch


@functools.cache  # asked every micro-batch: a capability query per call would cost host time
def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls and attention kernels run natively: CUDA from Ampere (8.0) on. Earlier GPUs
    emulate bf16 (and their fused attention kernels refuse it), which is slower than fp32."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def use_bf16(precision: str, device: torch.device) -> bool:
    """A recipe's `precision` (auto, fp32 or bf16) on `device`: auto means bf16 where it is native."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def keep_random_state():
    """torch.random.fork_rng over the CPU and every CUDA device, since torch.manual_seed reseeds them all:
    within it, seeding leaves the caller's random state as it was afterwards. (An MPS generator is not
    forked.) Every device named: fork_rng warns when left to guess among several."""
    return torch.random.fork_rng(list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])
