"""The device's peak FLOP/s, the denominator of model FLOP utilisation (MFU): measured, not looked up.

A large square matmul in the training dtype is as close to peak as real code gets: fp32 on a CPU
(with the threads torch uses), bf16 on CUDA (tensor cores). Best of several runs, so a busy machine
lowers the figure less.
"""

import time

import torch


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, runs: int = 8) -> tuple[float, str]:
    """(FLOP/s, how it was measured) of an (n, n) @ (n, n) matmul, best of `runs`."""
    n = n or (8192 if device.type == "cuda" else 1536)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: thread pools, kernels, allocator
    best = float("inf")
    for _ in range(runs):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    del a, b
    if device.type == "cuda":  # the workers, not this process, need the memory now
        torch.cuda.empty_cache()
    name = str(dtype).removeprefix("torch.")
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return 2 * n**3 / best, f"measured: {name} {n}x{n} matmul on {device_name(device)}{threads}, best of {runs}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
