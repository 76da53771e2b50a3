"""The training loop: AdamW with grouped decay, clipping, an LR schedule, periodic validation."""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data.dataset import CharDataset
from ..model import GPT
from ..recipe import Recipe
from .distributed import Distributed
from .progress import Progress


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; never norms' gains or biases (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def autocast(device: torch.device, precision: str):
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class EpochTimer:
    """Wall time of an epoch: CUDA events on a GPU (no host sync inside the epoch), else a clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()
        else:
            self._t0 = time.perf_counter()

    def seconds(self) -> float:
        if not self.cuda:
            return time.perf_counter() - self._t0
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self._begin.elapsed_time(end) / 1000


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    train_loss: float | None = None  # mean over the last logged interval
    val_loss: float | None = None
    best_val_loss: float | None = None
    tokens: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list, repr=False)


class Trainer:
    """Trains `model` on `dataset` as `recipe.train` says. `on_metrics(record)` receives one dict per
    step (and per validation), in order. Under torchrun, `dist` says which share of each batch is
    this process's; the metrics are averaged over all processes."""

    def __init__(self, recipe: Recipe, model: GPT, dataset: CharDataset, device: torch.device,
                 on_metrics: Callable[[dict], None] = lambda record: None, quiet: bool = False,
                 dist: Distributed = Distributed()):
        self.recipe, self.cfg = recipe, recipe.train
        self.model, self.dataset, self.device = model, dataset, device
        self.dist, self.step_model = dist, dist.wrap(model, device)
        self.on_metrics = on_metrics
        self.steps_per_epoch = dataset.steps_per_epoch(self.cfg.batch_size)
        self.total_steps = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, self.cfg.max_steps)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)  # fewer than asked if max_steps binds
        self.optimizer = self.cfg.optimizer.build().build(param_groups(model, self.cfg.weight_decay), self.cfg.lr)
        self.schedule = self.cfg.schedule.build(total_steps=self.total_steps)
        self.eval_starts = dataset.eval_starts(None if self.cfg.eval_batches is None
                                               else self.cfg.eval_batches * self.cfg.batch_size)
        self.progress = Progress(self.total_steps, quiet=quiet)
        self.state = TrainState()

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.dataset.block_size

    def fit(self) -> TrainState:
        cfg, state = self.cfg, self.state
        timer = EpochTimer(self.device)
        t0 = time.perf_counter()
        interval_t0, pending = t0, []  # losses stay on the device until a log line needs them
        self.model.train()
        for epoch in range(self.epochs):
            state.epoch = epoch
            starts = self.dataset.epoch_starts(self.recipe.seed, epoch)
            timer.start()
            for batch in range(self.steps_per_epoch):
                if state.step >= self.total_steps:
                    break
                lr = cfg.lr * self.schedule.factor(state.step)
                pending.append((self.train_step(starts, batch, lr), lr))
                state.step += 1
                state.tokens += self.tokens_per_step
                last = state.step == self.total_steps
                if (batch + 1) % cfg.log_every == 0 or batch + 1 == self.steps_per_epoch or last:
                    now = time.perf_counter()
                    self._flush(pending, epoch, batch, (len(pending) * self.tokens_per_step) / (now - interval_t0))
                    interval_t0, pending = now, []
                state.seconds = time.perf_counter() - t0
                self.progress.update(state.step, state.train_loss, state.tokens / state.seconds, state.seconds)
                if self._eval_due(batch, last):
                    self.evaluate()
            self.progress.log(f"Epoch {epoch + 1}/{self.epochs} done in {timer.seconds():.2f} s"
                              f"{' (CUDA events)' if timer.cuda else ''}")
        state.seconds = time.perf_counter() - t0
        self.progress.close()
        return state

    def train_step(self, starts: torch.Tensor, batch: int, lr: float) -> torch.Tensor:
        B = self.cfg.batch_size
        x, y = self.dataset.batch(self.dist.shard(starts[batch * B : (batch + 1) * B]))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with autocast(self.device, self.cfg.precision):
            _, loss = self.step_model(x, y)
        loss.backward()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the fixed validation windows (None without a validation split)."""
        if not len(self.eval_starts):
            return None
        self.model.eval()
        total = torch.zeros((), device=self.device)
        mine = self.dist.split(self.eval_starts)
        for i in range(0, len(mine), self.cfg.batch_size):
            starts = mine[i : i + self.cfg.batch_size]
            x, y = self.dataset.batch(starts, split="val")
            with autocast(self.device, self.cfg.precision):
                _, loss = self.model(x, y)
            total += loss.float() * len(starts)
        self.model.train()
        state = self.state
        state.val_loss = float(self.dist.sum(total)) / len(self.eval_starts)
        state.best_val_loss = min(state.val_loss, state.best_val_loss or math.inf)
        self.progress.log(f"Step {state.step} | Val loss: {state.val_loss:.4f} (best {state.best_val_loss:.4f})")
        self.on_metrics({"step": state.step, "epoch": state.epoch + 1, "val_loss": state.val_loss})
        return state.val_loss

    def _eval_due(self, batch: int, last: bool) -> bool:
        if last:
            return True
        if self.cfg.eval_every is None:
            return batch + 1 == self.steps_per_epoch
        return self.state.step % self.cfg.eval_every == 0

    def _flush(self, pending: list, epoch: int, batch: int, tokens_per_s: float) -> None:
        losses = self.dist.mean(torch.stack([loss for loss, _ in pending]).float()).tolist()  # the one host sync per interval
        first = self.state.step - len(pending) + 1
        for i, (loss, (_, lr)) in enumerate(zip(losses, pending)):
            self.on_metrics({"step": first + i, "epoch": epoch + 1, "train_loss": loss, "lr": lr,
                             "tokens_per_s": tokens_per_s})
        self.state.train_loss = sum(losses) / len(losses)
        pct = 100 * (batch + 1) / self.steps_per_epoch
        self.progress.log(f"Epoch {epoch + 1}/{self.epochs} | Batch {batch + 1}/{self.steps_per_epoch} "
                          f"({pct:.1f}%) | Loss: {losses[-1]:.4f}")
