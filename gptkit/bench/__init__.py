"""`gptkit bench`: training throughput of one recipe or of several variants of it, side by side.

Each variant trains in its own worker process (see worker.py). After warm-up the workers take turns,
round by round, so drift on a shared machine hits every variant alike; each figure is the median over
rounds, and variants are compared by their ratio to the first.

FLOPs per token are analytic (GPT.flops_per_token, PaLM's estimate: 6 per matmul weight plus
12 * n_layer * n_embd * block_size for attention, forward and backward); MFU divides the achieved
FLOP/s by the device's measured matmul peak (peak.py).
"""

import contextlib
import itertools
import json
import multiprocessing
import signal
import statistics
import threading
from dataclasses import asdict, dataclass, field
from multiprocessing import resource_tracker
from pathlib import Path

import torch

from ..device import resolve_device, use_bf16
from ..data.dataset import load_dataset
from ..errors import Interrupted, RunFailed, RunStopped, UserError, counted, first_line, override, warn
from ..recipe import load_recipe, yaml
from ..recipe.load import check_overrides, named_by_overrides, recipe_device
from ..recipe.vary import parse_vary as parse_vary_flags
from ..training.resume import MEET
from ..training.run import check_fits
from ..training.signals import interrupt_on_sigterm, signals_held
from ..training.speed import resolved_speed
from . import worker
from .peak import matmul_peak

FLOPS_FORMULA = "6 * (weights of every matmul) + 12 * n_layer * n_embd * block_size (PaLM, arXiv:2204.02311, App. B)"


@dataclass
class Variant:
    label: str
    overrides: list[str]
    ms_per_step: float = 0.0
    tokens_per_s: float = 0.0
    ratio: float = 1.0
    peak_memory: int | None = 0  # None: not asked for (the benchmark was interrupted)
    flops_per_token: int = 0
    flops_per_s: float = 0.0
    mfu: float = 0.0
    peak_flops: float = 0.0  # of its own device and dtype: variants may differ in train.precision
    warmup_seconds: float = 0.0  # building the model and the warm-up steps, compilation included
    params: int = 0
    tokens_per_step: int = 0
    micro_batch_size: int = 0
    compiled: bool = False
    round_ms: list[float] = field(default_factory=list)
    round_ratios: list[float] = field(default_factory=list)  # each round's tokens/s to the first's in that round
    failed: str | None = None  # why it stopped while measured: the others went on
    diverged_at: int | None = None  # the first step (warm-up counted) whose loss was not finite

    @property
    def origins(self) -> dict[str, str]:
        """Its overrides as errors name them (load_recipe's origins)."""
        return {t: f"--vary {t}" for t in self.overrides}

    @property
    def which(self) -> str:
        """How its errors begin: its name, when there are variants to tell apart."""
        return f"variant {self.label}: " if self.overrides else ""


def parse_vary(texts: list[str]) -> list[tuple[str, list[str]]]:
    """["model.attention=flash,naive"] -> [("model.attention", ["flash", "naive"])], split as ablate splits
    them: --vary 'model.positional={name: rope, base: 500},sinusoidal' --vary 'sample.prompt="a,b",c'."""
    axes = list(parse_vary_flags(texts, "KEY=VALUE1,VALUE2,..., e.g. --vary model.attention=flash,naive").items())
    for key, values in axes:
        for value in values:  # here, or a syntax error would be reported as the --set it becomes
            yaml.load(value, f"--vary {key}={value}", yaml.flag_quoted("--vary", key))
            if values.count(value) > 1:
                raise UserError(f"--vary {key}: {value} is given twice; give each value once")
    return axes


def variants(axes: list[tuple[str, list[str]]]) -> list[Variant]:
    """Every combination of the axes' values; the first value of each axis makes the baseline."""
    if not axes:
        return [Variant("baseline", [])]
    combos = itertools.product(*[[f"{key}={v}" for v in values] for key, values in axes])
    return [Variant(" ".join(c), list(c)) for c in combos]


def run_bench(recipe_path: str | Path, overrides: list[str] = (), vary: list[str] = (), steps: int = 5,
              warmup: int = 2, rounds: int = 3, threads: int | None = None, log=print) -> dict:
    """Benchmark every variant; returns the report (also what --json prints). A variant that fails while
    measured is left out of the rounds that follow and the others go on: then BenchIncomplete, holding
    the report and the variants' errors, is raised once they are done (every variant's error if none was
    measured)."""
    for name, value in (("overrides", overrides), ("vary", vary)):
        if isinstance(value, str):
            raise TypeError(f"{name} takes a list of strings, e.g. [{value!r}]")
    counts = {"steps": steps, "warmup": warmup, "rounds": rounds} | ({} if threads is None else {"threads": threads})
    for name, value in counts.items():  # threads=None: torch's own count
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    axes = parse_vary(list(vary))
    varied = {key for key, _ in axes}
    for text in check_overrides(overrides):  # each variant sets the key after it: the --set would count for nothing
        key = text.partition("=")[0].strip()
        if key in varied:
            raise UserError(f"{override(text)}: --vary {key} gives that key its value in every variant; drop the "
                            "--set, or give its value among the --vary's")
    check_timed(axes)
    found = variants(axes)
    recipes = [load_recipe(recipe_path, [*overrides, *v.overrides], origins=v.origins) for v in found]
    check_distinct(found, recipes)  # all checked before any work, their device and data too
    check_variant_data(found, recipes, overrides)
    check_distinct(found, recipes, resolved=True)
    threads = threads or torch.get_num_threads()
    with interrupt_on_sigterm("benchmarking"):  # its workers stopped too, not this process alone
        peaks = measure_peaks(recipes, threads, log)
        memory_kind, errors, stopped = measure(found, recipes, threads, warmup, steps, rounds, log)
        # Again once the workers are done: a neighbour on the host can slow one measurement by a third,
        # which would inflate every MFU (past 100%); the faster of the two is nearer the truth.
        if len(errors) < len(found) and stopped is None:  # (no MFU to compute when nothing was measured)
            after = measure_peaks(recipes, threads, log, again=True)
            faster = {key: max(before, after[key]) for key, before in peaks.items()}  # (FLOP/s, how): by FLOP/s
            peaks = {key: (flops, f"{source}, before the variants ran and after, the faster")
                     for key, (flops, source) in faster.items()}
        for v, recipe in zip(found, recipes):
            v.peak_flops = peaks[peak_key(recipe.train)][0]
    device, _ = first = peak_key(recipes[0].train)
    peak, peak_source = peaks[first]
    measured = [v for v in found if v.label not in errors]
    for v in measured:
        v.ms_per_step = statistics.median(v.round_ms)
        v.tokens_per_s = v.tokens_per_step / (v.ms_per_step / 1000)
        v.flops_per_s = v.flops_per_token * v.tokens_per_s
        v.mfu = v.flops_per_s / v.peak_flops
        v.ratio = v.tokens_per_s / measured[0].tokens_per_s  # the first variant's, or the first still measured
        v.round_ratios = [(v.tokens_per_step / ms) / (measured[0].tokens_per_step / first_ms)
                          for ms, first_ms in zip(v.round_ms, measured[0].round_ms)]
    for v in found:
        if v.label in errors:  # no figures, not even a ratio of 1
            v.failed, v.ratio = str(errors[v.label]).removeprefix(v.which), 0.0
    report = {
        "recipe": str(recipe_path),
        "overrides": list(overrides),
        "device": str(device),
        "threads": threads if device.type == "cpu" else None,
        "peak_flops": peak,  # the first variant's; each variant has its own peak_flops
        "peak_source": peak_source,
        "peaks": [{"flops": flops, "source": source} for flops, source in peaks.values()],
        "flops_formula": FLOPS_FORMULA,
        "memory_kind": memory_kind,
        "warmup_steps": warmup,
        "steps_per_round": steps,
        "rounds": min((len(v.round_ms) for v in measured), default=0) if stopped else rounds,
        "variants": [asdict(v) for v in found],
    }
    report["notes"] = notes(report)  # what the figures cannot be trusted for, as the table says it
    if stopped is not None:
        report["notes"].append(f"note: interrupted after {counted(report['rounds'], 'round')} of {rounds}: the figures "
                               "are of those; peak memory was not measured")
        raise BenchInterrupted(report, stopped)
    if errors:
        raise BenchIncomplete(report, list(errors.values()))
    return report


class BenchInterrupted(Exception):
    """A SIGINT or SIGTERM stopped the benchmark after whole rounds: `report` holds their figures, `stopped`
    the KeyboardInterrupt or Interrupted to raise once it is shown."""

    def __init__(self, report: dict, stopped: BaseException):
        super().__init__(f"interrupted after {counted(report['rounds'], 'round')}")
        self.report, self.stopped = report, stopped


class BenchIncomplete(Exception):
    """Variants failed while measured: `report` holds every figure measured (of the others, if any),
    `errors` why each failed variant stopped."""

    def __init__(self, report: dict, errors: list[BaseException]):
        super().__init__(f"{counted(len(errors), 'variant')} failed")
        self.report, self.errors = report, errors


# Keys a benchmark's training steps do not depend on: varied, every variant would time the same steps
# (the learning rate is held at its peak; the budget and the intervals of logs, evaluations and saves)
UNTIMED = ("name", "seed", "sample", "train.lr", "train.schedule", *MEET)


def check_timed(axes: list[tuple[str, list[str]]]) -> None:
    for key, _ in axes:
        if any(key == k or key.startswith(k + ".") for k in UNTIMED):
            raise UserError(f"--vary {key}: a benchmark times training steps, which {key} does not change (nor "
                            f"{', '.join(k + ('.*' if k == 'sample' else '') for k in UNTIMED if k != key)}); "
                            "vary what may change their speed, or compare the runs themselves with gptkit ablate")


def check_distinct(found: list[Variant], recipes: list, resolved: bool = False) -> None:
    """Two variants that resolve to the same recipe would measure one thing twice: refused. With `resolved`
    (once every variant's device is known to be there), also two that differ only in how this machine
    resolves them: train.device cpu and auto without a GPU, train.compile auto and false on a CPU,
    micro_batch_size 3 and 2 at batch 8 (both 2 rows)."""
    seen = {}
    for v, recipe in zip(found, recipes):
        data = recipe.to_dict()
        here = resolved_speed(recipe) if resolved else {}
        data["train"] |= {key.removeprefix("train."): value for key, value in here.items()}
        same = seen.setdefault(json.dumps(data, sort_keys=True), v)
        if same is not v:  # values spelled apart (parse_vary refuses a value given twice)
            a, b = zip(*[(x, y) for x, y in zip(same.overrides, v.overrides) if x != y])
            how = ", ".join(f"{k.removeprefix('train.')} {json.dumps(value)}" for k, value in here.items())
            raise UserError(f"--vary {' '.join(a)} and {' '.join(b)} " + (
                f"time the same steps here ({how}); give values that differ here" if resolved else
                "give the same recipe; give each value once"))


def check_variant_data(found: list[Variant], recipes: list, overrides: list[str]) -> None:
    """Every variant's device and data checked as `gptkit run` checks them before training (but for
    sample.prompt: nothing is sampled), here rather than after the peak and the earlier variants' warm-ups.
    A device that is not there is named by the --set or --vary that asked for it."""
    for v, recipe in zip(found, recipes):
        recipe_device(recipe, [*overrides, *v.overrides], v.origins)
        try:
            with named_by_overrides(overrides):  # --set train.batch_size=100000 (a variant is named below)
                dataset = load_dataset(recipe.data, recipe.model.block_size)  # creates a corpus file, as the worker would
                check_fits(recipe, dataset, prompt=None)
        except UserError as e:
            raise UserError(v.which + str(e)) from None


@contextlib.contextmanager
def worker_starting():
    """Around a worker's start. The worker inherits SIGINT blocked (masks survive exec), so that a Ctrl-C
    cannot raise KeyboardInterrupt in it before worker.main ignores SIGINT (multiprocessing guards its
    resource tracker so, bpo-33613); and the parent acts on SIGINT or SIGTERM only once the worker is
    among those it stops, not halfway through its start (the worker would print an EOFError)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    resource_tracker.ensure_running()  # now: when the first start launches it, it unblocks SIGINT after
    with signals_held():
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def measure_peaks(recipes: list, threads: int, log, again: bool = False) -> dict:
    """{(device, dtype): (FLOP/s, how it was measured)} for every variant's, in the variants' order."""
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # for the peak; each worker sets its own
    try:
        peaks = {}
        for recipe in recipes:
            key = peak_key(recipe.train)
            if key not in peaks:
                peaks[key] = matmul_peak(*key)
                log(f"{'Peak again' if again else 'Peak'} {peaks[key][0] / 1e9:,.1f} GFLOP/s ({peaks[key][1]})")
    finally:
        torch.set_num_threads(caller_threads)
    return peaks


def measure(found: list[Variant], recipes: list, threads: int, warmup: int, steps: int, rounds: int, log
            ) -> tuple[str, dict[str, UserError | RunStopped], BaseException | None]:
    """Train every variant in its own worker process: warm-up, then `rounds` of `steps` steps, the
    workers taking turns. Fills in the variants' figures; returns what their peak memory measures,
    {label: error} for the variants that failed (the others went on without them), and the SIGINT's
    KeyboardInterrupt or SIGTERM's Interrupted that stopped the rounds after one at least was whole
    (their figures kept, the round under way dropped; before then it is raised)."""
    ctx = multiprocessing.get_context("spawn")  # a forked OpenMP runtime can hang; spawn is safe everywhere
    procs, conns, errors = [], [], {}

    def reply(v: Variant, conn, proc, message: tuple) -> dict | None:
        try:
            return ask(conn, message, proc, v.which)
        except (UserError, BenchFailed) as e:  # this variant's: the others go on
            errors[v.label] = e
            proc.kill()
            log(f"  {v.label} failed: {first_line(e).removeprefix(v.which)}")
            return None

    def going():  # the variants not failed, with their pipes and processes
        return [(v, conn, proc) for v, conn, proc in zip(found, conns, procs) if v.label not in errors]

    try:
        for v, recipe in zip(found, recipes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker.main, args=(child, recipe.to_dict(), threads), daemon=True)
            with worker_starting():
                proc.start()
                procs.append(proc)
            conns.append(parent)
            info = reply(v, parent, proc, ("warmup", warmup))
            if info is None:
                continue
            for said in info["warnings"]:  # a compilation that failed, say: the variant is measured without it
                warn(f"{v.which}{said}")
            v.warmup_seconds, v.diverged_at = info["build_seconds"] + info["seconds"], info["diverged_at"]
            for key in ("params", "flops_per_token", "tokens_per_step", "micro_batch_size", "compiled"):
                setattr(v, key, info[key])
            log(f"  warmed up {v.label} in {v.warmup_seconds:.1f} s")
        whole = 0  # rounds every variant still measured has finished
        try:
            for r in range(rounds):
                if not going():  # every variant failed: nothing left to measure
                    break
                for v, conn, proc in going():
                    done = reply(v, conn, proc, ("run", steps))
                    if done is not None:
                        v.round_ms.append(1000 * done["seconds"] / steps)
                        v.diverged_at = done["diverged_at"]
                if going():
                    times = ", ".join(f"{v.round_ms[-1]:,.0f}" for v, _, _ in going())
                    log(f"  round {r + 1}/{rounds}: {times} ms/step")
                whole = r + 1
        except (KeyboardInterrupt, Interrupted) as e:
            if not (whole and going()):
                raise
            for proc in procs:  # (one may be mid-round: its answer would come first)
                proc.kill()
            for v, _, _ in going():
                del v.round_ms[whole:]
                v.peak_memory = None
            return "", errors, e
        memory_kind = ""
        for v, conn, proc in going():
            stats = reply(v, conn, proc, ("stop",))
            if stats is not None:
                v.peak_memory, memory_kind = stats["peak_memory"], stats["memory_kind"]
        return memory_kind, errors, None
    except BaseException:  # the others wait for a message that will not come: end them now
        for proc in procs:
            proc.kill()
        raise
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()


def peak_key(train) -> tuple[torch.device, torch.dtype]:
    """The device and matmul dtype a variant trains in: what its MFU is measured against."""
    device = resolve_device(train.device)
    return device, torch.bfloat16 if use_bf16(train.precision, device) else torch.float32


class BenchFailed(RunFailed):
    """A variant's worker process died or raised: the benchmark cannot finish (exit code 1)."""


def ask(conn, message: tuple, proc, which: str) -> dict:
    """The worker's reply to `message`; its failure begins with `which` (Variant.which)."""
    conn.send(message)
    while not conn.poll(1):
        if not proc.is_alive():
            killed = " (killed: out of memory?)" if proc.exitcode == -9 else ""
            raise BenchFailed(f"{which}its benchmark process died with exit code {proc.exitcode}{killed}")
    reply = conn.recv()
    if "user_error" in reply:
        raise UserError(which + reply["user_error"])
    if "error" in reply:
        raise BenchFailed(f"{which}its benchmark process failed:\n{reply['error']}")
    return reply


def format_report(report: dict) -> str:
    peaks = "; ".join(f"{p['flops'] / 1e9:,.1f} GFLOP/s ({p['source']})" for p in report["peaks"])
    lines = [
        f"device {report['device']}" + (f", {counted(report['threads'], 'thread')}" if report["threads"] else "")
        + f"; peak {peaks}",
        f"FLOPs/token = {report['flops_formula']}",
        f"{counted(report['warmup_steps'], 'warm-up step')}, then {counted(report['rounds'], 'interleaved round')} "
        f"of {counted(report['steps_per_round'], 'step')}; medians"
        + (f"; memory is the {report['memory_kind']}" if report["memory_kind"] else ""),
        "",
    ]
    width = max(len("variant"), *(len(v["label"]) for v in report["variants"]))
    measured = [v for v in report["variants"] if not v["failed"]]
    spread = lambda v: f"{min(v['round_ratios']):.2f}-{max(v['round_ratios']):.2f}x"  # noqa: E731
    ranged = report["rounds"] > 1 and len(measured) > 1  # each round's own ratio: how far the machine drifted
    span = max(len("per round"), *(len(spread(v)) for v in measured)) if ranged else 0
    lines.append(f"{'variant':<{width}}  {'ms/step':>9}  {'tokens/s':>9}  {'ratio':>6}  "
                 + (f"{'per round':>{span}}  " if ranged else "")
                 + f"{'peak mem':>10}  {'MFLOP/tok':>9}  {'GFLOP/s':>8}  {'MFU':>6}  {'warm-up':>8}")
    for v in report["variants"]:
        if v["failed"]:
            lines.append(f"{v['label']:<{width}}  failed: {v['failed'].splitlines()[0]}")
            continue
        lines.append(f"{v['label']:<{width}}  {v['ms_per_step']:>9,.1f}  {v['tokens_per_s']:>9,.0f}  "
                     f"{v['ratio']:>5.2f}x  " + (f"{spread(v):>{span}}  " if ranged else "")
                     + (f"{v['peak_memory'] / 2**20:>6,.0f} MiB" if v["peak_memory"] is not None else f"{'-':>10}")
                     + f"  {v['flops_per_token'] / 1e6:>9.3g}  "
                     f"{v['flops_per_s'] / 1e9:>8,.1f}  {100 * v['mfu']:>5.1f}%  {v['warmup_seconds']:>7.1f}s")
    if not measured:
        return "\n".join(lines)
    lines.append("(tokens/step " + ", ".join(f"{v['tokens_per_step']:,}" for v in measured) + "; micro-batch "
                 + ", ".join(f"{v['micro_batch_size']}{' compiled' if v['compiled'] else ''}" for v in measured) + ")")
    if measured[0] is not report["variants"][0]:
        lines.append(f"(ratios to {measured[0]['label']}: the first variant failed)")
    return "\n".join(lines + report.get("notes", notes(report)))  # (a report of before notes were kept: made now)


def notes(report: dict) -> list[str]:
    """What a report's figures cannot be trusted for: rounds whose ratios disagree (the machine drifted),
    an MFU past 100% (the peak was measured while the machine was slower than when the variants ran), a
    variant that diverged (its steps compute NaN or inf, which no run would time)."""
    measured = [v for v in report["variants"] if not v["failed"]]
    said = []
    if report["rounds"] > 1 and len(measured) > 1 and any(
            max(v["round_ratios"]) > DRIFT * min(v["round_ratios"]) for v in measured):
        said.append(f"note: a variant's ratio differs by more than {DRIFT - 1:.0%} from round to round (per round: the "
                    "lowest and highest of each round's own ratio): the machine's speed changed while measuring "
                    "(other programs, a busy host), and a difference between variants smaller than that is not "
                    "measured; close other programs, or give more --rounds")
    if any(v["mfu"] > 1 for v in measured):
        said.append("note: an MFU above 100%: the machine was slower while its peak was measured, before the variants "
                    "ran and after, than while they ran (other programs, a busy host); the ratios stand, the MFU does "
                    "not: measure again on a quieter machine")
    for v in measured:
        if v.get("diverged_at") is not None:  # (a report of before it was kept has none)
            whose = f"variant {v['label']}'s" if len(report["variants"]) > 1 else "the"
            said.append(f"note: {whose} loss was not finite from step {v['diverged_at']:,} on: it diverged (a "
                        "benchmark trains at train.lr from its first step, without the schedule's warm-up), and its "
                        "figures time steps of NaN or inf, which a run stops at; lower train.lr with --set")
    return said


DRIFT = 1.25  # rounds whose ratios differ by more than this factor: the machine drifted
