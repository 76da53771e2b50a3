"""The training loop: the recipe's optimizer over parameter groups by role, clipping, an LR schedule,
periodic validation and checkpoints, a divergence guard, and a clean stop on SIGINT/SIGTERM.

Everything a resumed run needs is in `Trainer.state_dict()`: the optimizer, the step (which fixes
the epoch and the batch, since batch order is a function of seed and epoch), the RNG states and
the running figures. A run stopped at step k and resumed takes the same steps, bit for bit.
"""

import contextlib
import math
import signal
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from ..components.schedule import factor_rule, is_factor
from ..data.dataset import CharDataset
from ..device import arithmetic, use_bf16
from ..diagnose import backward_culprit, blaming, component_specs, plugin_components, with_checks
from ..errors import (Diverged, Interrupted, OutOfMemory, UserError, counted, goes_on_by, one_line, out_of_memory_as,
                      out_of_memory_on, warn)
from ..model import GPT
from ..recipe import Recipe
from ..recipe.components import ComponentSpec
from .checkpoint import unloadable
from .distributed import Distributed
from .optim_setup import build_optimizer, flat_gradients, param_groups, set_lr
from .progress import Progress, fmt_duration, time_left
from .signals import stop_on_signals
from .speed import compile_failures, compiled, micro_batch_size


def total_steps(epochs: int, max_steps: int | None, steps_per_epoch: int) -> int:
    """A run's step budget (a recipe's train.epochs and train.max_steps): its epochs, cut short by max_steps."""
    steps = epochs * steps_per_epoch
    return steps if max_steps is None else min(steps, max_steps)


def run_steps(recipe: Recipe, dataset: CharDataset) -> int:
    """The steps one run of `recipe` trains on `dataset`, counted as the Trainer counts them."""
    train = recipe.train
    return total_steps(train.epochs, train.max_steps, dataset.steps_per_epoch(train.batch_size))


def trained_toward(recipe: dict, steps_per_epoch: int) -> int | None:
    """The step budget of a run's saved recipe (a dict, as a checkpoint holds it), its text and batch
    size being this run's (which make an epoch's steps: resuming keeps them); None where it does not say."""
    train = recipe.get("train")
    epochs, max_steps = (train.get("epochs"), train.get("max_steps")) if isinstance(train, dict) else (None, None)
    if type(epochs) is not int or not (max_steps is None or type(max_steps) is int):
        return None
    return total_steps(epochs, max_steps, steps_per_epoch)


def schedule_warning(spec: ComponentSpec, factor: Callable[[int], float], n: int) -> str | None:
    """A warning when the schedule `spec` (its `factor`) never comes within 1% of train.lr in a run of `n`
    steps: a warm-up longer than a short run (a smoke test's max_steps) trains, or compares arms, at a
    learning rate no one chose; or, for one with a `min_factor`, when it never decays to it (a warm-up
    as long as the run but one step). Sampled at 10,000 steps at most."""
    steps = range(n) if n <= 10_000 else (i * (n - 1) // 9_999 for i in range(10_000))
    peak = max((factor(step) for step in steps), default=1.0)
    warmup = getattr(spec.params, "warmup_steps", None)
    floor = getattr(spec.params, "min_factor", None)
    if peak >= 0.99:  # a decay that warm-up leaves no step for: the last step trains at the peak
        no_room = isinstance(warmup, int) and isinstance(floor, (int, float)) and n > 1 and warmup >= n - 1
        if no_room and factor(n - 1) > floor + 0.01:
            return (f"train.schedule ({spec.name}) never decays to its min_factor ({floor:g}) in {counted(n, 'step')}: "
                    f"its warmup_steps ({warmup:,}) leave{'s' if warmup == 1 else ''} no step to decay over")
        return None
    why = f": its warmup_steps ({warmup:,}) is longer than the run" if isinstance(warmup, int) and warmup >= n else ""
    return f"train.schedule ({spec.name}) never reaches train.lr in {counted(n, 'step')} (at most {peak:.0%} of it){why}"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16(precision, device) else contextlib.nullcontext()


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
    train_loss: float | None = None  # mean over the last log_every steps
    recent_losses: list[float] = field(default_factory=list)  # those steps' losses: kept, so a resumed run agrees
    val_loss: float | None = None
    best_val_loss: float | None = None
    tokens: int = 0
    seconds: float = 0.0  # training wall time, summed over resumed sessions
    step_seconds: float = 0.0  # of it, in training steps: evaluations and saves left out
    eval_pending: bool = False  # an evaluation was due when the run was stopped
    eval_step: int | None = None  # of the last evaluation: a run ends with one at its last step
    eval_windows: int | None = None  # how many the evaluations took: best_val_loss compares those alone


def _fits(value, hint) -> bool:
    """Whether `value` is of the type `hint` (of TrainState's fields: int, float, bool, None, list[...],
    unions), as a checkpoint holds it: an int passes for a float, a bool for neither."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if hint in (int, float):
        return isinstance(value, int if hint is int else int | float) and not isinstance(value, bool)
    return value is None if hint is type(None) else isinstance(value, hint)


def state_dict_problem(saved, step: int) -> str | None:
    """What a checkpoint's training state (Trainer.state_dict(), in the checkpoint of `step`) lacks, for one
    damaged or edited by hand ("optimizer state", "random state", ...); None if nothing. Checked before
    resuming, which would otherwise fail deep inside with a traceback, or go on from nonsense."""
    if not isinstance(saved, dict):
        return "training state"
    if not isinstance(saved.get("optimizer"), dict):
        return "optimizer state"
    state, hints = saved.get("state"), typing.get_type_hints(TrainState)
    if not (isinstance(state, dict) and "step" in state and all(k in hints and _fits(v, hints[k]) for k, v in state.items())):
        return "training state (step, epoch, losses, time)"
    if state["step"] != step:
        return f"training state (of step {state['step']}, in the checkpoint of step {step})"
    rng = saved.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8
            and all(isinstance(v, torch.Tensor) for v in rng.values())):
        return "random state"
    return None


class PendingSteps:
    """Each step's loss and gradient norm, kept on the device until the next log, where one host sync
    reads them all. One preallocated buffer: no small tensor per step is left alive between
    activations, where on CPU it fragments the heap (10 to 40 MB of peak memory on the CPU recipes)."""

    def __init__(self, capacity: int, device: torch.device):
        self.values = torch.zeros(max(1, capacity), 2, device=device)  # (step, [loss, grad norm])
        self.lrs: list[float] = []

    def __len__(self) -> int:
        return len(self.lrs)

    def add(self, loss: torch.Tensor, grad_norm: torch.Tensor, lr: float) -> None:
        if len(self) == len(self.values):  # only when logging is less regular than log_every
            self.values = torch.cat((self.values, torch.zeros_like(self.values)))
        self.values[len(self), 0] = loss
        self.values[len(self), 1] = grad_norm
        self.lrs.append(lr)

    def take(self) -> tuple[torch.Tensor, list[float]]:
        """(steps, 2) losses and gradient norms (a copy), and the learning rates; empties the buffer."""
        values, lrs = self.values[: len(self)].clone(), self.lrs
        self.lrs = []
        return values, lrs


class Trainer:
    """Trains `model` on `dataset` as `recipe.train` says.

    `on_metrics(record)` receives one dict per step and per validation, in step order;
    `on_checkpoint(trainer)` is called whenever a checkpoint is due and must save `state_dict()`.
    Under torchrun, `dist` says which share of each batch is this process's; the metrics are
    averaged over all processes.
    """

    def __init__(self, recipe: Recipe, model: GPT, dataset: CharDataset, device: torch.device,
                 on_metrics: Callable[[dict], None] = lambda record: None,
                 on_checkpoint: Callable[["Trainer"], None] = lambda trainer: None, quiet: bool = False,
                 dist: Distributed = Distributed()):
        self.recipe, self.cfg = recipe, recipe.train
        self.model, self.dataset, self.device = model, dataset, device
        self.dist = dist
        self.on_metrics, self.on_checkpoint = on_metrics, on_checkpoint
        self.steps_per_epoch = dataset.steps_per_epoch(self.cfg.batch_size)
        self.total_steps = total_steps(self.cfg.epochs, self.cfg.max_steps, self.steps_per_epoch)
        self.epochs = math.ceil(self.total_steps / self.steps_per_epoch)  # fewer than asked if max_steps binds
        self.optimizer = build_optimizer(self.cfg.optimizer, param_groups(model, self.cfg.weight_decay), self.cfg.lr)
        # Every component and the optimizer, each with the spec it was built from: whose bug an exception is.
        self.specs = component_specs(model, recipe.model) | {self.optimizer: self.cfg.optimizer}
        self.schedule = self.cfg.schedule.build(self.total_steps)
        self.eval_starts = self._eval_starts(self.cfg.eval_batches)
        self.progress = Progress(self.total_steps, quiet=quiet)
        self.state = TrainState()
        self.micro_batch = micro_batch_size(self.cfg.micro_batch_size, self.cfg.batch_size // dist.world_size,
                                            dataset.block_size, device)
        flat_gradients(model)
        self.wrapped = dist.wrap(model, device)  # under torchrun, DDP: it averages gradients across processes
        self.train_forward = compiled(self.wrapped, self.cfg.compile, device)
        self.stop_signal: int | None = None
        self.stopping = False
        self._pending = PendingSteps(min(self.cfg.log_every, self.steps_per_epoch), device)  # flushed by then
        self._interval_t0 = time.perf_counter()
        self.saved_step: int | None = None  # of the last checkpoint written, or resumed from
        self._saved_eval: tuple[int | None, bool] = (None, False)  # its evaluation, and whether one was due

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.dataset.block_size

    def schedule_warning(self) -> str | None:
        """See `schedule_warning`; a schedule whose factor() cannot be taken is its own error, named."""
        return schedule_warning(self.cfg.schedule, self._factor, self.total_steps)

    def restretch_warning(self, saved_recipe: dict) -> str | None:
        """A warning when this run, resumed (from a checkpoint holding `saved_recipe`), goes on with a schedule
        built for another budget than it trained toward, which disagrees with the old one at the last step
        taken: the rest is stretched (or squeezed) over the new budget, and the run matches neither a run
        of the old budget nor one of the new. None for a constant schedule, or in a warm-up."""
        taken, n = self.state.step, self.total_steps
        toward = trained_toward(saved_recipe, self.steps_per_epoch)
        if toward is None or toward == n or not 0 < taken < n:
            return None
        try:  # the last step taken, which the old schedule covers (a finished run's next is past its steps)
            last = float(self.cfg.schedule.build(toward).factor(taken - 1))
        except Exception:  # only a comparison: a schedule that fails it is not this run's error
            return None
        if math.isclose(last, self._factor(taken - 1), rel_tol=1e-9, abs_tol=1e-12):
            return None
        was, now = self.cfg.lr * last, self.cfg.lr * self._factor(taken)
        how = "stretched" if n > toward else "squeezed"
        return (f"train.schedule ({self.cfg.schedule.name}) is now {how} over {n:,} steps instead of the "
                f"{toward:,} this run trained toward: the learning rate goes from {was:.3g} at step {taken:,} "
                f"to {now:.3g} at step {taken + 1:,}, and the run matches neither a run of {toward:,} steps nor one "
                f"of {n:,} (a new run follows one schedule throughout)")

    @property
    def is_compiled(self) -> bool:
        """Whether steps run through torch.compile: not once a compilation failed (see _compile_failed)."""
        return self.train_forward is not self.wrapped

    @property
    def arithmetic(self) -> str:
        """What `train.precision` resolved to here: "bf16 autocast" or "fp32"."""
        return arithmetic(self.cfg.precision, self.device)

    def budget(self) -> str:
        """A new run's opening line of what it trains: "1,500 steps (train.max_steps: 6.6 of 10 epochs of 226
        batches)" (its log then counts 7 epochs) or "1,560 steps (10 epochs of 156 batches)"."""
        per, total, epochs = self.steps_per_epoch, self.total_steps, self.cfg.epochs
        of = f"{counted(epochs, 'epoch')} of {per:,} batch{'' if per == 1 else 'es'}"
        if total < epochs * per:
            share = f"{total / per:.1f}" if total >= per / 10 else f"{total / per:.1g}"  # 0.0004 of an epoch, not 0.0
            return f"Budget: {counted(total, 'step')} (train.max_steps: {share} of {of})"
        return f"Budget: {counted(total, 'step')} ({of})"

    def describe(self) -> str:
        """How a step runs, for the run's opening lines: e.g. "bf16 autocast, torch.compile"."""
        parts = [self.arithmetic]
        if self.dist.world_size > 1:  # DistributedDataParallel under torchrun
            parts.append(f"{self.dist.world_size} processes with {torch.distributed.get_backend()}, "
                         f"{counted(self.cfg.batch_size // self.dist.world_size, 'row')} of each batch apiece")
        if self.is_compiled:
            parts.append("torch.compile")
        if self.micro_batch < self.cfg.batch_size // self.dist.world_size:
            parts.append(f"micro-batches of {counted(self.micro_batch, 'row')}")
        return ", ".join(parts)

    # ---- checkpointable state ----------------------------------------------------------------
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        optimizer = self.optimizer.state_dict()
        found = unloadable(optimizer, "state_dict()")
        if found:  # else the checkpoint is written, and no resume or sample can load it
            raise self.cfg.optimizer.error(f"its state_dict() holds {found}, which a checkpoint loaded with "
                                           "torch.load(weights_only=True) cannot; keep tensors and plain Python values there")
        return {"optimizer": optimizer, "state": asdict(self.state), "rng": rng}

    def _eval_starts(self, eval_batches: int | None) -> torch.Tensor:
        """The validation windows `eval_batches` batches take (None: every one)."""
        return self.dataset.eval_starts(None if eval_batches is None else eval_batches * self.cfg.batch_size)

    def load_state_dict(self, saved: dict, saved_recipe: dict | None = None) -> None:
        """Go on from a `state_dict`, saved under `saved_recipe` (a Recipe's to_dict(); None: this one), whose
        train.eval_batches counts an older checkpoint's evaluation windows."""
        try:
            self.optimizer.load_state_dict(saved["optimizer"])
        except (ValueError, KeyError) as e:  # parameter groups that do not line up
            raise UserError(f"the checkpoint's optimizer state does not fit train.optimizer "
                            f"({self.cfg.optimizer.name}): {e}. It was written with another optimizer or by an "
                            "older gptkit; start a new run instead of resuming") from None
        self.state = TrainState(**saved["state"])
        if "eval_step" not in saved["state"]:  # an older checkpoint's: its step was evaluated, as it then assumed
            self.state.eval_step = self.state.step
        if "step_seconds" not in saved["state"]:  # an older checkpoint's: its steps' time is not known apart
            self.state.step_seconds = self.state.seconds
        if "eval_windows" not in saved["state"]:  # an older checkpoint's
            batches = saved_recipe["train"].get("eval_batches") if saved_recipe else self.cfg.eval_batches
            self.state.eval_windows = len(self._eval_starts(batches))
        self.saved_step, self._saved_eval = self.state.step, self._evaluation()  # the checkpoint resumed from
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(saved["rng"]["cuda"], self.device)

    # ---- the loop ------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to the end of the budget, or until a stop (see `RunStopped`)."""
        try:
            # A step's or a validation's out-of-memory is an OutOfMemory already (_sized_by_settings). Elsewhere
            # (an epoch's order, the check of the weights before a save) no setting of a step is to blame; a
            # save's own is the run's failed save.
            with self.dist.needing_peers(self.where, lambda: f", and {self._checkpoint_note()}"), \
                    out_of_memory_as(self._elsewhere):
                return self._fit()
        finally:
            self.progress.close()  # the live line ends before any message

    def _elsewhere(self, e: BaseException) -> OutOfMemory:
        when = f"after step {self.state.step:,}" if self.state.step else "before the first step"
        return OutOfMemory(f"out of memory on {out_of_memory_on(e, self.device)} {when}, outside the training steps "
                           f"and validations; free some memory (close other programs) and try again "
                           f"({self._checkpoint_note()})")

    def _sized_by_settings(self) -> contextlib.AbstractContextManager[None]:
        """Within it (a step's or a validation's computation), running out of memory is what the settings
        ask of the device, and one error says which to lower."""

        def error(e: BaseException) -> OutOfMemory:
            note = self._checkpoint_note()
            if self.saved_step is not None and not goes_on_by():  # (an ablation's failed run starts over)
                note += ": a resumed run may take smaller micro-batches (train.micro_batch_size)"
            return OutOfMemory(f"{self.memory_error(e)} ({note})")

        return out_of_memory_as(error)

    def memory_error(self, e: BaseException) -> OutOfMemory:
        """Running out of memory (`e`) in a step or a validation, said as what the settings ask of the device."""
        block = self.model.config.block_size
        ask = f"micro-batches of {counted(self.micro_batch, 'row')}"  # validation's too
        fix = "train.micro_batch_size, model.block_size" if self.micro_batch > 1 else "model.block_size"
        return OutOfMemory(f"out of memory on {out_of_memory_on(e, self.device)} {self.where()}: {ask} of {block:,} "
                           f"tokens need more than it has; lower {fix} or the model's size")

    def where(self) -> str:
        """Where training is, for what happened there: "at step 21", or "in the validation at step 20"
        (a validation follows its step: saying the next one would name a step never taken)."""
        s = self.state
        return f"in the validation at step {s.step}" if s.eval_pending else f"at step {s.step + 1}"

    def _fit(self) -> TrainState:
        state = self.state
        timer = EpochTimer(self.device)
        self._t0 = time.perf_counter() - state.seconds  # as if this session went on from the earlier ones
        self._interval_t0 = time.perf_counter()
        self.model.train()
        with stop_on_signals(self):
            if state.eval_pending:
                self.evaluate()
                self._checkpoint_and_stop_if_asked()
            if self.is_compiled and state.step < self.total_steps:  # silent for up to a minute or two, else
                self.progress.status("compiling the training step (torch.compile; train.compile: false skips it)...")
            first_epoch, first_batch = divmod(state.step, self.steps_per_epoch)
            # Resumed at its budget (train.max_steps, mid-epoch), a run has no epoch to go on with, or to report.
            for epoch in range(first_epoch, self.epochs if state.step < self.total_steps else first_epoch):
                state.epoch = epoch
                starts = self.dataset.epoch_starts(self.recipe.seed, epoch)
                timer.start()
                for batch in range(first_batch if epoch == first_epoch else 0, self.steps_per_epoch):
                    if state.step >= self.total_steps:
                        break
                    lr = self.cfg.lr * self._factor(state.step)
                    with self._sized_by_settings():
                        loss, norm = self.train_step(starts, batch, lr)
                    self._pending.add(loss, norm, lr)
                    state.step += 1
                    state.tokens += self.tokens_per_step
                    last = state.step == self.total_steps
                    end_of_epoch = batch + 1 == self.steps_per_epoch
                    if (batch + 1) % self.cfg.log_every == 0 or end_of_epoch or last:
                        self._log(epoch, batch, self._flush())
                    state.seconds = self._elapsed()
                    in_steps = state.step_seconds + time.perf_counter() - self._interval_t0  # as the summary's
                    self.progress.update(state.step, state.train_loss, state.tokens / in_steps, state.seconds)
                    if last or (end_of_epoch if self.cfg.eval_every is None else state.step % self.cfg.eval_every == 0):
                        self.evaluate()
                    every = self.cfg.checkpoint_every
                    if last or (end_of_epoch if every is None else state.step % every == 0):
                        self._save()
                    self._checkpoint_and_stop_if_asked()
                done = state.step - epoch * self.steps_per_epoch  # fewer than an epoch: max_steps cut it short
                ended = ("done in" if done >= self.steps_per_epoch else
                         f"stopped at batch {done}/{self.steps_per_epoch} (train.max_steps) after")
                # what is left, for a log without the live line (a file, a job's output): at this run's pace so far
                left = time_left(self.total_steps, state.step, state.seconds)
                resumed = first_batch if epoch == first_epoch else 0  # this session timed only the batches after it
                part = f" for batches {resumed + 1:,} to {done:,} (resumed after batch {resumed:,})" if resumed else ""
                self.progress.log(f"Epoch {epoch + 1}/{self.epochs} {ended} {timer.seconds():.2f} s"
                                  f"{' (CUDA events)' if timer.cuda else ''}{part}"
                                  f"{f' (about {fmt_duration(left)} left)' if state.step < self.total_steps else ''}")
            if state.eval_step != state.step:  # resumed at its budget after a stop between evaluations
                self.evaluate()  # a run's final figures are its last step's
            self._checkpoint_and_stop_if_asked()  # a stop asked with no step left to take it at
        if not self._saved():
            state.seconds = self._elapsed()  # else the checkpoint's: a resume with nothing to do keeps it
        self.progress.close()
        return state

    def train_step(self, starts: torch.Tensor, batch: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step; the loss and gradient norm stay on the device (no host sync). A plugin
        component's bug in it (in train mode, backward or its optimizer's step, where the check before
        training does not look) is one error naming the component."""
        with blaming(self.specs, f"in training step {self.state.step + 1}", self._backward_culprit):
            return self._step(starts, batch, lr)

    def _step(self, starts: torch.Tensor, batch: int, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        B = self.cfg.batch_size
        x, y = self.dataset.batch(self.dist.shard(starts[batch * B : (batch + 1) * B]))
        self.dist.seed(self.recipe.seed, self.state.step)  # under torchrun, other ranks' own dropout masks
        set_lr(self.optimizer, lr)
        try:
            loss = self._gradients(x, y)
        except compile_failures(self.train_forward) as e:  # evaluated only when something was raised
            self._compile_failed(e)
            self.optimizer.zero_grad(set_to_none=False)  # whatever the failed attempt accumulated
            loss = self._gradients(x, y)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=False)  # in place: the gradients stay in their flat buffer
        return loss, norm

    def _gradients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Accumulate the batch's gradients, micro-batch by micro-batch; return its mean loss."""
        loss = torch.zeros((), device=self.device)
        micro = list(zip(x.split(self.micro_batch), y.split(self.micro_batch)))
        for i, (xm, ym) in enumerate(micro):
            with self._accumulating(last=i == len(micro) - 1):
                with autocast(self.device, self.cfg.precision):
                    _, micro_loss = self.train_forward(xm, ym)
                micro_loss = micro_loss * (len(xm) / len(x))  # weighted: the sum is the mean over the whole batch
                micro_loss.backward()  # gradients add up across micro-batches
            loss += micro_loss.detach()
        return loss

    def _compile_failed(self, e: Exception) -> None:
        """torch.compile could not build the step (its forward on the first call, its backward lazily on
        the first backward): training goes on without it, since the recipe asked for speed, not for
        the compiler, and the same step runs eagerly."""
        reason = one_line(getattr(e, "inner_exception", e))
        if self.dist.is_main:
            warn(f"train.compile: torch.compile failed ({reason}); training without it. Set train.compile=false "
                 "to skip compiling")
        self.train_forward = self.wrapped

    def _accumulating(self, last: bool):
        """Under DDP, gradients of all but the last micro-batch stay local: one all-reduce per step."""
        if last or not isinstance(self.wrapped, DistributedDataParallel):
            return contextlib.nullcontext()
        return self.wrapped.no_sync()

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the fixed validation windows (None without a validation split). A stop
        request abandons it; it is then redone first thing when the run resumes."""
        state = self.state
        state.eval_pending = True
        self._flush()  # keep metrics in step order: this step's train loss before its val loss
        if not len(self.eval_starts):
            state.eval_pending, state.eval_step = False, state.step
            return None
        self.model.eval()
        total = torch.zeros((), device=self.device)
        mine = self.dist.split(self.eval_starts)
        # Every rank goes round as often as the one with the most windows and asks every round, so all
        # abandon the evaluation together: one leaving alone would pair its next collective with the
        # others' sum of the losses.
        most = -(-len(self.eval_starts) // self.dist.world_size)
        where = f"in validation at step {state.step}"
        for i in range(0, most, self.cfg.batch_size):
            if self.dist.any_rank(self.stop_signal is not None):
                self.model.train()
                return None
            starts = mine[i : i + self.cfg.batch_size]
            if not len(starts):  # this rank's share is one window short
                continue
            with self._sized_by_settings():
                x, y = self.dataset.batch(starts, split="val")
                for xm, ym in zip(x.split(self.micro_batch), y.split(self.micro_batch)):  # as training's memory allows
                    with autocast(self.device, self.cfg.precision), blaming(self.specs, where):
                        _, loss = self.model(xm, ym)
                    total += loss.float() * len(xm)
        self.model.train()
        val_loss = float(self.dist.sum(total)) / len(self.eval_starts)
        if not math.isfinite(val_loss):  # the last step's update broke the weights; its loss came before it
            self._diverged(state.step, f"the validation loss after it is {val_loss}", update=True)
        state.eval_pending, state.eval_step = False, state.step
        state.val_loss = val_loss
        self._interval_t0 = time.perf_counter()  # the next steps' tokens/s leaves the evaluation out
        if state.eval_windows != len(self.eval_starts):  # resumed with another train.eval_batches
            if state.best_val_loss is not None:
                self.progress.log(f"The validation now takes {len(self.eval_starts):,} windows, not "
                                  f"{state.eval_windows:,} (train.eval_batches): the best validation loss starts "
                                  "again from this one")
            state.best_val_loss, state.eval_windows = None, len(self.eval_starts)
        state.best_val_loss = val_loss if state.best_val_loss is None else min(val_loss, state.best_val_loss)
        self.progress.log(f"Step {state.step} | Val loss: {state.val_loss:.4f} (best {state.best_val_loss:.4f})")
        self.on_metrics({"step": state.step, "epoch": state.epoch + 1, "val_loss": state.val_loss})
        return state.val_loss

    # ---- helpers ---------------------------------------------------------------------------------
    def _flush(self) -> list[float]:
        """Write the buffered per-step metrics: the one host sync per log interval. Every checkpoint
        and evaluation flushes first, so a divergence found here stops the run before anything from a
        step at or after it is saved; the steps before it are written, as the summary counts them."""
        if not len(self._pending):
            return []
        values, lrs = self._pending.take()
        losses, norms = self.dist.mean(values[:, 0]).tolist(), values[:, 1].tolist()  # norms: of the shared gradients
        now = time.perf_counter()  # after the sync: on a GPU the host runs ahead of the steps it timed
        self.state.step_seconds += now - self._interval_t0
        tokens_per_s = len(lrs) * self.tokens_per_step / max(now - self._interval_t0, 1e-9)
        first = self.state.step - len(losses) + 1
        good = next((i for i, (loss, norm) in enumerate(zip(losses, norms))
                     if not (math.isfinite(loss) and math.isfinite(norm))), len(losses))
        for i, (loss, norm, lr) in enumerate(zip(losses[:good], norms, lrs)):
            self.on_metrics({"step": first + i, "epoch": self.state.epoch + 1, "train_loss": loss, "lr": lr,
                             "grad_norm": norm, "tokens_per_s": tokens_per_s})
        if good:
            # Over the last log_every steps, not over this flush: evaluations, checkpoints and stops flush
            # between log lines too, and a resumed run must report what an uninterrupted one would.
            recent = self.state.recent_losses = (self.state.recent_losses + losses[:good])[-self.cfg.log_every:]
            self.state.train_loss = sum(recent) / len(recent)
        if good < len(losses):
            loss, norm = losses[good], norms[good]
            if first + good == 1 and not math.isfinite(loss):  # computed before any update: not the learning rate
                self._diverged(1, f"the model's loss is {loss} before any update, so the learning rate is not the "
                               "cause", self._broken_from_the_start())
            what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm}"
            self._diverged(first + good, what)
        self._interval_t0 = now
        return losses

    def _elapsed(self) -> float:
        """Training wall time, summed over the sessions of a resumed run."""
        return time.perf_counter() - self._t0

    def _save(self) -> None:
        s = self.state
        # Also after an evaluation at a step already saved (a resumed run's final one): else a resume from
        # that checkpoint would evaluate the step again and write its record twice.
        if not self._saved():
            self._flush()
            finite = torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()  # one host sync
            if not finite:  # as the last step left them
                self._diverged(s.step, "its update left weights that are not finite", update=True)
            s.seconds = self._elapsed()  # the evaluation before the save too
            self.on_checkpoint(self)
            self.saved_step, self._saved_eval = s.step, self._evaluation()
            self._interval_t0 = time.perf_counter()  # and the saving

    def _evaluation(self) -> tuple[int | None, bool]:
        return self.state.eval_step, self.state.eval_pending

    def _saved(self) -> bool:
        """Whether the last checkpoint holds the state as it is (its step, evaluation and one due)."""
        return (self.saved_step, self._saved_eval) == (self.state.step, self._evaluation())

    def _backward_culprit(self, e: BaseException):
        """The plugin component whose backward raised `e` in a training step, if one did."""
        return backward_culprit(e, self.specs, self.model.config, self.device)

    def _factor(self, step: int) -> float:
        """The schedule's multiplier of train.lr; a value no learning rate can be made of is the
        schedule's bug, named as such rather than met as a divergence or a traceback later."""
        with self.cfg.schedule.blamed(f"factor({step})"):
            factor = self.schedule.factor(step)
        if not is_factor(factor):
            raise self.cfg.schedule.error(f"factor({step}) returned {factor!r}; a schedule's factor "
                                          f"{factor_rule(factor)}")
        return float(factor)  # a numpy scalar in the optimizer's state would make the checkpoint unsafe to load

    def _log(self, epoch: int, batch: int, losses: list[float]) -> None:
        if losses:  # the loss of the last log_every steps, as the live line and the summary's train loss say
            pct = 100 * (batch + 1) / self.steps_per_epoch
            self.progress.log(f"Epoch {epoch + 1}/{self.epochs} | Batch {batch + 1}/{self.steps_per_epoch} "
                              f"({pct:.1f}%) | Loss: {self.state.train_loss:.4f}")

    def _checkpoint_and_stop_if_asked(self) -> None:
        # Every rank must stop at the same step, or the others hang; asking costs no GPU sync. Only the
        # agreed answer counts: a signal that lands during the vote waits for the next step boundary.
        if not self.dist.any_rank(self.stop_signal is not None):
            return
        self.stopping = True  # agreed: no rank votes again
        self.stop_signal = self.dist.most(self.stop_signal or 0)  # the signal, whichever rank received it
        self._save()
        self.dist.outlive()
        self.progress.close()
        name = signal.Signals(self.stop_signal).name
        raise Interrupted(self.stop_signal, f"{name} received: stopped at step {self.state.step} with a checkpoint saved")

    def _diverged(self, step: int, what: str, fix: str = "try a lower train.lr, warm-up, or train.grad_clip",
                  update: bool = False) -> None:
        """Stop at `step`, whose loss or gradient was not finite, or (`update`) whose loss was, and was
        written, but whose update broke the weights. The summary counts the steps the metrics hold."""
        self.state.step = step if update else step - 1
        self.state.tokens = self.state.step * self.tokens_per_step
        self.progress.close()
        kept = "Nothing after its training loss was saved" if update else "Nothing from that step on was saved"
        raise Diverged(f"training diverged at step {step}: {what}. {kept} and {self._checkpoint_note(good=True)}; "
                       f"{fix}")

    def _broken_from_the_start(self) -> str:
        """What to look at when the untrained model's loss is not finite: its plugin components, or else
        the data and the sizes."""
        plugins = plugin_components(self.recipe.model)
        if plugins:
            which = "its plugin component" if len(plugins) == 1 else "one of its plugin components"
            return f"{which} may compute it: {with_checks(plugins)}"
        return ("the model has only gptkit's own components: check the training text and the model's sizes "
                "(model.n_embd, model.n_layer, model.block_size)")

    def _checkpoint_note(self, good: bool = False) -> str:
        """What a stopped run can go on from: 'the last checkpoint (step 1,200) is intact'."""
        if self.saved_step is None:
            return "no checkpoint had been saved yet"
        return f"the last {'good ' if good else ''}checkpoint (step {self.saved_step:,}) is intact"
