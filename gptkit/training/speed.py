"""How a training step runs fast: micro-batch size and torch.compile, resolved from a recipe's `auto`.

The `auto` choices are measured, not guessed (README, "Performance"): on a CPU one big batch is slower
than the same tokens in micro-batches, because each step allocates and frees activation tensors far
larger than the caches; on CUDA the whole batch in one pass keeps the GPU busy.
"""

import torch

from ..device import arithmetic, resolve_device

# CPU micro-batches of about this many tokens ran fastest on the reference model (2 threads).
CPU_MICRO_BATCH_TOKENS = 4096


def micro_batch_size(setting: int | str | None, batch_size: int, block_size: int, device: torch.device) -> int:
    """Rows per forward/backward pass: the largest divisor of `batch_size` (this process's rows of a
    batch) within the setting, since equal micro-batches keep compiled shapes static (an uneven last
    one recompiles); the setting itself if no divisor comes within half of it (a prime batch would
    go one row at a time). `auto`: within CPU_MICRO_BATCH_TOKENS on a CPU, the whole batch elsewhere."""
    if setting is None:
        return batch_size
    if setting == "auto":
        if device.type != "cpu":
            return batch_size
        setting = max(1, CPU_MICRO_BATCH_TOKENS // block_size)
    setting = min(setting, batch_size)
    divisor = max(d for d in range(1, setting + 1) if batch_size % d == 0)
    return divisor if 2 * divisor >= setting else setting


def compile_setting(setting: bool | str, device: torch.device) -> bool | str:
    """What a recipe's train.compile means on `device`: `auto` compiles on CUDA only (on a CPU its compile
    time outweighed the gain in runs of a few minutes); a string other than `auto` is torch.compile's mode."""
    return device.type == "cuda" if setting == "auto" else setting


def compiled(model: torch.nn.Module, setting: bool | str, device: torch.device) -> torch.nn.Module:
    """`model`, or a torch.compile'd view of it sharing its parameters, as `compile_setting` says."""
    setting = compile_setting(setting, device)
    if setting is False:
        return model
    return torch.compile(model, mode=None if setting is True else setting)


def compile_failures(model: torch.nn.Module) -> tuple[type[Exception], ...]:
    """The exceptions by which a `compiled` model's first call says torch.compile could not build it
    (no working C++ compiler for the CPU backend, an operator the backend cannot handle); none for an
    uncompiled model. Imported only when compiling: torch._dynamo costs memory and start-up time."""
    if not hasattr(model, "_orig_mod"):
        return ()
    from torch._dynamo.exc import BackendCompilerFailed

    return (BackendCompilerFailed,)


def resolved_speed(recipe) -> dict[str, object]:
    """How this machine resolves the train keys a recipe may leave to it (`auto`), which set only how fast
    and in what arithmetic its steps run: {"train.device": "cpu", "train.micro_batch_size": 16, ...}. A
    UserError names train.device if this machine lacks it."""
    t = recipe.train
    device = resolve_device(t.device, "train.device")
    return {"train.device": str(device),
            "train.micro_batch_size": micro_batch_size(t.micro_batch_size, t.batch_size, recipe.model.block_size,
                                                       device),
            "train.precision": arithmetic(t.precision, device), "train.compile": compile_setting(t.compile, device)}
