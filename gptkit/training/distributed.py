"""Data-parallel training across processes started by `torchrun` (DistributedDataParallel).

torchrun starts one process per device and tells each its place through environment variables
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Every rank builds the same model from
the same seed and walks the same shuffled windows; each takes its own slice of every global batch,
and DDP averages the gradients, so a step equals one single-process step on the whole batch.
Without torchrun (or with one process) everything here is a no-op.
"""

import atexit
import contextlib
import gc
import hashlib
import importlib
import inspect
import json
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel

from ..errors import RunFailed, UserError
from ..ranks import stray_world_size, under_torchrun

DDP_OPTIONS = inspect.signature(DistributedDataParallel).parameters
FAILED = 2  # what a rank that failed alone adds to a vote, plus its exit code: a stop vote's flags are 0 and 1


class PeerFailed(RunFailed):
    """Under torchrun, another rank failed alone (rank 0, writing the run folder) and reports why: this
    one stops without a word, with its exit code, instead of meeting its closed connection."""

    def __init__(self, exit_code: int):
        super().__init__(f"another process of this torchrun job failed (exit code {exit_code}) and reports why")
        self.exit_code = exit_code


class PeerLost(RunFailed):
    """Under torchrun, another process ended in the middle of a collective (killed, or stopped by an
    error of its own, which it reports): this one cannot go on without it."""


def lost(message: str) -> PeerLost:
    """PeerLost(message), for a process that found another one gone. torchrun stops the job now that a
    process has ended: its SIGTERM must not cut short the record of why, or the message, of a process that
    is ending anyway, so it is ignored from here to the process's exit (no signal context restores it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return PeerLost(message)


def lost_peer(e: BaseException) -> bool:
    """Whether `e`, raised by a collective, says another process is gone (gloo's closed or reset
    connection, NCCL's backend error) rather than something wrong in this one."""
    message = str(e)
    return isinstance(e, td.DistBackendError) or (isinstance(e, RuntimeError) and "gloo" in message and any(
        lost in message for lost in ("closed by peer", "reset by peer", "Broken pipe")))


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # on this machine
    host_group: object = None  # gloo group for agreements on the host; None: the default group, already gloo

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints and writes files."""
        return self.rank == 0

    def check_batch_size(self, batch_size: int, resuming: bool = False) -> None:
        if not batch_size % self.world_size:
            return
        divisors = ", ".join(map(str, sorted({d for n in range(1, math.isqrt(batch_size) + 1) if not batch_size % n
                                               for d in (n, batch_size // n)})[:16]))
        run = f"run {divisors} process{'es' if batch_size > 1 else ''}"
        other = run if resuming else (
            f"use a multiple of {self.world_size}, e.g. {max(1, batch_size // self.world_size) * self.world_size}, "
            f"or {run}")
        raise UserError(f"train.batch_size {batch_size} is the global batch and must split evenly over the "
                        f"{self.world_size} processes; {other}")

    def check_same(self, what: str, value: str, fix: str) -> None:
        """UserError on every rank unless all ranks hold the same `value`: a mismatch found later would
        crash a collective (or hang one on NCCL), or train on different data without a word."""
        if not self._agree(_hash(value)):
            raise UserError(f"the {self.world_size} processes disagree on {what}; {fix}")

    def every_rank_if_apart(self, settings: dict[str, object]) -> list[dict] | None:
        """None if every rank holds the same `settings` (JSON values, compared by a hash); else every rank's,
        in rank order, for an error that says which differ."""
        if self._agree(_hash(json.dumps(settings, sort_keys=True))):
            return None
        every = [None] * self.world_size
        td.all_gather_object(every, settings, group=self.host_group)
        return every

    def _agree(self, value: int) -> bool:
        """Whether every rank holds the same `value` (a 60-bit hash, say)."""
        if self.world_size == 1:
            return True
        t = torch.tensor([value, -value], dtype=torch.int64)
        td.all_reduce(t, op=td.ReduceOp.MIN, group=self.host_group)  # (min, -max)
        return int(t[0]) == -int(t[1])

    @contextlib.contextmanager
    def local_main_first(self):
        """Rank 0 of each machine runs the block before the machine's other ranks do (creating a corpus
        file once per machine, not once per process)."""
        if self.world_size > 1 and self.local_rank:
            td.barrier(group=self.host_group)
        try:
            yield
        finally:  # on an error too: the others then meet it themselves and report it, instead of waiting
            if self.world_size > 1 and not self.local_rank:
                td.barrier(group=self.host_group)

    @contextlib.contextmanager
    def needing_peers(self, when: str | Callable[[], str], more: Callable[[], str] = lambda: ""):
        """Within it, a collective that finds another process gone raises PeerLost ("another process of this
        torchrun job ended `when`", then `more()`), said once by rank 0, instead of gloo's error and a
        traceback. `when` may be a function, asked once it has happened (the step it happened at)."""
        try:
            yield
        except RuntimeError as e:
            if self.world_size == 1 or not lost_peer(e):
                raise
            when = when() if callable(when) else when
            raise lost(f"another process of this torchrun job ended {when} (its connection closed); it says why "
                       f"itself if it could{more()}") from None

    def seed(self, seed: int, step: int) -> None:
        """Give every rank but 0 a random stream of its own (dropout masks), derived from (seed, rank,
        step): called before every step, so a resumed run draws what an uninterrupted one would without
        saving each rank's state. Rank 0 keeps the single-process stream, which the checkpoint holds;
        the initial weights come from the shared seed before this; the data order has its own generator."""
        if self.rank:
            digest = hashlib.sha256(f"{seed}:{self.rank}:{step}".encode()).digest()
            torch.manual_seed(int.from_bytes(digest[:8], "little"))

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (batch_size / world_size rows)."""
        n = len(batch) // self.world_size
        return batch[self.rank * n : (self.rank + 1) * n]

    def split(self, items: torch.Tensor) -> torch.Tensor:
        """Every world_size-th item from this rank's: uneven lengths allowed (validation windows)."""
        return items[self.rank :: self.world_size]

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank. A CPU all-reduce through gloo: it never waits for the GPU.
        PeerFailed if a rank `abort`ed instead of voting."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([float(flag)])
        td.all_reduce(t, op=td.ReduceOp.MAX, group=self.host_group)
        if int(t) >= FAILED:
            raise PeerFailed(int(t) - FAILED)
        return bool(t)

    def most(self, value: int) -> int:
        """The largest of the ranks' `value`s (a CPU all-reduce, like any_rank's)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([value])
        td.all_reduce(t, op=td.ReduceOp.MAX, group=self.host_group)
        return int(t)

    def abort(self, exit_code: int) -> None:
        """Take part in the vote the other ranks are waiting at (or are on their way to) as a rank that
        failed alone: they stop quietly with `exit_code`, and this rank reports the error once."""
        if self.world_size > 1:
            with contextlib.suppress(RuntimeError):  # they may be gone already: nothing is left to tell
                td.all_reduce(torch.tensor([float(FAILED + exit_code)]), op=td.ReduceOp.MAX, group=self.host_group)

    def outlive(self) -> None:
        """Wait until every rank gets here, or ends: after PeerFailed, the rank that failed (rank 0) has then
        said why and ended, so that torchrun names it, not this rank, as the job's failure; after a stop,
        rank 0 has saved its checkpoint before any rank ends (torchrun stops the rest of a job when one
        process ends with an error)."""
        if self.world_size > 1:
            try:
                td.barrier(group=self.host_group)
            except RuntimeError:  # a connection closed, which rank 0 does on its way out: see it gone too
                if self.rank:
                    _wait_for_rank_0_to_end()

    def failed_in_training(self, step: int) -> None:
        """Rank 0, failing with a user's error (a plugin's bug) in training step `step`: tell the other
        ranks, which may be failing with the same error, that rank 0 says it (see `fails_alone`)."""
        if self.world_size > 1 and self.is_main:
            with contextlib.suppress(Exception):  # the error itself matters more
                _store().set(f"{ERROR_KEY}/{step}", "1")

    def fails_alone(self, step: int, wait: float = 3.0) -> bool:
        """A rank but 0, failing with a user's error in training step `step`: whether rank 0 did not fail
        with one there too (a bug met in this rank's share of the batch alone), so that this rank must say
        it itself. A plugin's bug met by every rank is then said once, by rank 0. Through the job's
        key-value store, not a collective: rank 0 may be waiting in one that this rank never joins."""
        deadline = time.monotonic() + wait
        try:
            store = _store()
            while not store.check([f"{ERROR_KEY}/{step}"]):  # polled: the store's own timed wait logs its timeout
                if time.monotonic() > deadline:  # rank 0 trains on, waiting for this one
                    return True
                time.sleep(0.05)
        except Exception:  # the store is gone with rank 0
            return True
        return False

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return self.sum(t) / self.world_size if self.world_size > 1 else t

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            t = t.clone()
            td.all_reduce(t)
        return t

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """The model that training steps call: DDP averages its gradients across ranks."""
        if self.world_size == 1:
            return model
        # torch >= 2.13 names the option forward_sync_buffers and deprecates broadcast_buffers.
        option = "forward_sync_buffers" if "forward_sync_buffers" in DDP_OPTIONS else "broadcast_buffers"
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       **{option: has_state_buffers(model)})


def _hash(text: str) -> int:
    """60 bits of `text`'s SHA-256: a value `_agree` compares across ranks."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


def has_state_buffers(model: torch.nn.Module) -> bool:
    """Whether `model` has a persistent buffer (one its state_dict holds): state a component may update as
    it trains (a running statistic), which DDP must then broadcast from rank 0 before every forward, or
    the ranks drift apart. Non-persistent buffers are tables derived from the config, the same on every
    rank: a model with only those has nothing to sync each step."""
    saved = model.state_dict().keys()
    return any(name in saved for name, _ in model.named_buffers())


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the torchrun job this process belongs to, if any: (its place, the device it trains on).
    NCCL on CUDA, each rank on the GPU numbered by its LOCAL_RANK; gloo elsewhere."""
    if not under_torchrun():
        return Distributed(), device
    stray = None if td.is_initialized() else stray_world_size(
        "start the processes with torchrun (torchrun --nproc_per_node N -m gptkit run ...), or unset WORLD_SIZE to "
        "train in one")
    if stray:  # first: a stray LOCAL_RANK must not be taken for a process torchrun placed; else, later, torch's
        raise stray  # traceback from the rendezvous
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        here, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)), torch.cuda.device_count()
        if here > gpus:  # every rank of the machine says so, so that its rank 0 reports it
            raise UserError(f"torchrun started {here} processes on this machine, which has {gpus} CUDA "
                            f"device{'s' if gpus != 1 else ''}; use --nproc_per_node {gpus} or fewer, or "
                            "train.device=cpu")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not td.is_initialized():
        # Before the group exists: torch._dynamo imported after it (DDP imports it) holds on to the group for
        # good, so that its gloo threads and connections outlived destroy_process_group into the
        # interpreter's shutdown, where a peer closing its end now and then aborted the process.
        importlib.import_module("torch._dynamo")
        with joining():
            td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_leave)
    host_group = None if td.get_backend() == "gloo" else td.new_group(backend="gloo")
    if td.get_rank() == 0:
        with contextlib.suppress(Exception):  # a group made without a store: the others only wait less
            _store().set(RANK_0_KEY, f"{socket.gethostname()} {os.getpid()}")
    return Distributed(td.get_rank(), td.get_world_size(), local_rank, host_group), device


JOIN_NOTE_AFTER = 5.0  # seconds of waiting for the job's other processes before it is said


@contextlib.contextmanager
def joining():
    """Around joining the job, which waits in torch's C++ (gloo's or NCCL's rendezvous) for every process,
    up to torch's 30-minute timeout, where Python's Ctrl-C handling cannot run: SIGINT then ends the process
    at once, as nothing is there to save yet; and a wait of more than a few seconds is said (a process
    started by hand, its peers never)."""
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    note = (f"note: rank {os.environ.get('RANK', '?')} is waiting for the other processes of its job "
            f"(WORLD_SIZE={os.environ.get('WORLD_SIZE')}) to join at {where}; torchrun starts them all")
    timer = threading.Timer(JOIN_NOTE_AFTER, lambda: print(note, file=sys.stderr, flush=True))
    timer.daemon = True
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_DFL) if main else None
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        if main:
            signal.signal(signal.SIGINT, previous)


ERROR_KEY = "gptkit/rank-0-failed-at-step"
RANK_0_KEY = "gptkit/rank-0-process"  # its machine and pid


def _wait_for_rank_0_to_end(limit: float = 30.0) -> None:
    """On rank 0's machine, until its process is gone and reaped by torchrun (which then names it as the
    job's failure), at most `limit` seconds; elsewhere its own machine's torchrun names it."""
    try:
        store = _store()
        host, pid = store.get(RANK_0_KEY).decode().split() if store.check([RANK_0_KEY]) else ("", "0")
    except Exception:  # no torchrun store to ask (it went with rank 0)
        return
    deadline = time.monotonic() + limit
    while host == socket.gethostname() and time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)  # a zombie answers too, until torchrun has seen it end
        except (ProcessLookupError, PermissionError):  # (another user's: not rank 0)
            return
        time.sleep(0.05)


def _store() -> td.Store:
    from torch.distributed.distributed_c10d import _get_default_store  # torch's own handle on torchrun's store

    return _get_default_store()


def _leave() -> None:
    """Close the job's connections while Python is whole, not in its shutdown: a trainer's DDP wrapper,
    garbage in a reference cycle, still holds the group until collected."""
    if td.is_initialized():
        gc.collect()
        td.destroy_process_group()
