"""The device's peak FLOP/s, the denominator of model FLOP utilisation (MFU): measured, not looked up.

A large square matmul in the training dtype is as close to peak as real code gets: fp32 on a CPU
(with the threads torch uses), bf16 on CUDA (tensor cores). Best of several runs, so a busy machine
lowers the figure less.
"""

import time

import torch

from ..errors import counted


# On a CPU one matmul of the measurement takes at most about this long: a dtype the CPU only emulates
# (bf16 without AVX-512 BF16 or AMX runs at ~1 GFLOP/s) made a 1536-wide peak take two minutes.
CPU_SECONDS_PER_MATMUL = 0.25


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, runs: int = 8) -> tuple[float, str]:
    """(FLOP/s, how it was measured) of an (n, n) @ (n, n) matmul, best of `runs`."""
    if not n:  # fp32 runs natively on every CPU; another dtype may be emulated, and slow
        n = 8192 if device.type == "cuda" else 1536 if dtype == torch.float32 else cpu_size(dtype, 1536)
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
    threads = f", {counted(torch.get_num_threads(), 'thread')}" if device.type == "cpu" else ""
    return 2 * n**3 / best, f"measured: {name} {n}x{n} matmul on {device_name(device)}{threads}, best of {runs}"


def cpu_size(dtype: torch.dtype, largest: int, probe: int = 256) -> int:
    """The matmul size, a multiple of 64 up to `largest`, that takes about CPU_SECONDS_PER_MATMUL at
    the speed a `probe`-wide one shows (an underestimate of the large one's: fast dtypes stay at `largest`)."""
    a = torch.randn(probe, probe, dtype=dtype)
    a @ a
    best = float("inf")
    for _ in range(3):  # the best of a few: one timing on a busy machine says little
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    flops_per_s = 2 * probe**3 / max(best, 1e-9)
    fits = (CPU_SECONDS_PER_MATMUL * flops_per_s / 2) ** (1 / 3)
    return max(probe, min(largest, int(fits) // 64 * 64))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
