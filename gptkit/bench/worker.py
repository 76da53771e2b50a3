"""One benchmark variant in its own process, so its peak memory is its own and nothing it leaves
behind (allocator caches, compiled graphs) slows the others. The parent drives it over a pipe:

    ("warmup", n) -> {"seconds", "diverged_at", "build_seconds", "flops_per_token", "tokens_per_step", ...}
    ("run", n)    -> {"seconds", "diverged_at"}        n timed training steps, synchronised at the end
    ("stop",)     -> {"peak_memory", "memory_kind"}    then the process exits

Signals are the parent's to handle (it stops its workers); a worker whose parent has gone ends quietly.
"""

import math
import multiprocessing
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

import torch

from ..data.dataset import load_dataset
from ..device import resolve_device
from ..errors import GptkitWarning, UserError, out_of_memory_as
from ..recipe.load import validate
from ..training.build import build_checked
from ..training.trainer import Trainer
from .peak import sync


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what): the CUDA allocator's high-water mark, or the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA max allocated"
    try:  # Linux: this process's own; ru_maxrss starts at the parent's peak, carried over by exec
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024, "peak RSS of the process"
    except (OSError, AttributeError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024), "peak RSS of the process"


class Bench:
    def __init__(self, recipe_dict: dict):
        t0 = time.perf_counter()
        recipe = validate(recipe_dict)
        self.device = resolve_device(recipe.train.device)
        dataset = load_dataset(recipe.data, recipe.model.block_size)
        model, _ = build_checked(recipe, dataset.vocab_size, self.device)  # as `gptkit run` builds and checks it
        dataset.to(self.device)
        dataset.check_batch_size(recipe.train.batch_size)
        self.trainer = Trainer(recipe, model, dataset, self.device, quiet=True)
        self.starts = dataset.epoch_starts(recipe.seed, 0)
        self.lr = recipe.train.lr
        self.diverged_at = None  # the first step whose loss was not finite
        self.info = {
            "build_seconds": time.perf_counter() - t0,
            "params": model.num_params(),
            "flops_per_token": model.flops_per_token(),
            "tokens_per_step": self.trainer.tokens_per_step,
            "micro_batch_size": self.trainer.micro_batch,
        }

    def steps(self, n: int) -> float:
        """Seconds for n training steps, from a synchronised start to a synchronised end."""
        sync(self.device)
        t0 = time.perf_counter()
        losses = []
        state = self.trainer.state  # its step names the step in a component's error, as in a run
        for _ in range(n):
            with out_of_memory_as(self.trainer.memory_error):
                loss, _ = self.trainer.train_step(self.starts, state.step % self.trainer.steps_per_epoch, self.lr)
            losses.append(loss)
            state.step += 1
        values = torch.stack(losses).tolist()  # waits for the steps' work on any device
        sync(self.device)
        seconds = time.perf_counter() - t0
        if self.diverged_at is None:  # read after the clock stopped: the timed steps hold no check
            first = state.step - n + 1
            self.diverged_at = next((first + i for i, x in enumerate(values) if not math.isfinite(x)), None)
        return seconds


def main(conn, recipe_dict: dict, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # blocked since this process started (bench.worker_starting)
    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(threads)
    try:
        serve(conn, recipe_dict)
    except (EOFError, ConnectionError):  # the parent has gone: there is no one to answer or tell
        pass


def exit_with_parent() -> None:
    """Ends this process as soon as the parent has gone, however it went (SIGKILL too), rather than
    training on for no one."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        parent.join()
        os._exit(0)


def serve(conn, recipe_dict: dict) -> None:
    bench = None
    try:
        while True:
            command, *args = conn.recv()
            if command == "warmup":
                with warnings.catch_warnings(record=True) as caught:  # gptkit's, for the parent to say
                    warnings.simplefilter("always", GptkitWarning)
                    bench = Bench(recipe_dict)
                    seconds = bench.steps(args[0])  # a compilation that fails here falls back to eager
                for w in caught:
                    if not issubclass(w.category, GptkitWarning):
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
                if bench.device.type == "cuda":  # the timed steps' memory, not compilation's or autotuning's
                    torch.cuda.reset_peak_memory_stats(bench.device)
                said = [str(w.message) for w in caught if issubclass(w.category, GptkitWarning)]
                conn.send({**bench.info, "compiled": bench.trainer.is_compiled, "seconds": seconds, "warnings": said,
                           "diverged_at": bench.diverged_at})
            elif command == "run":
                conn.send({"seconds": bench.steps(args[0]), "diverged_at": bench.diverged_at})
            else:
                memory, kind = peak_memory(bench.device)
                conn.send({"peak_memory": memory, "memory_kind": kind})
                return
    except (EOFError, ConnectionError):  # the parent has gone: see main
        raise
    except UserError as e:
        conn.send({"user_error": str(e)})
    except Exception:  # reported to the parent, which has the terminal
        conn.send({"error": traceback.format_exc()})
