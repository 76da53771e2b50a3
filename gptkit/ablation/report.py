"""Aggregating an ablation: per-arm mean ± 95% confidence interval over seeds, the paired difference
to the baseline, results.csv (one row per run) and results.md (one row per arm).

The difference to the baseline is *paired by seed*: arm and baseline runs of one seed share the data,
the batch order and the validation windows, so the per-seed differences remove that shared noise.
Its interval is Student's t over those differences; an arm whose interval contains 0 is "within noise".
A verdict that does not survive Holm's correction across the arms (or main effects) compared says so.
"""

import csv
import io
import math
import statistics
from dataclasses import dataclass
from functools import lru_cache

from ..errors import first_line
from ..plugins import software_text
from ..training.folder import diverged, failed, finished
from ..training.progress import fmt_duration
from .spec import Arm, short_names, unequal_terms

# A validation loss is a float32 model's mean: seeds that all differ from the baseline by the same few
# rounding steps are no evidence of a difference, though their interval has no width.
FLOAT_NOISE = 1e-5  # relative to the arm's loss

CSV_FIELDS = ["arm", "baseline", "seed", "run_dir", "status", "final_val_loss", "best_val_loss", "final_train_loss",
              "params", "flops_per_token", "steps", "tokens", "tokens_per_s", "wall_seconds", "reason"]


def t_cdf(x: float, df: int, n: int = 2000) -> float:
    """P(T <= x) for Student's t with `df` degrees of freedom, x >= 0. With t = sqrt(df) tan(phi) the
    density is proportional to cos(phi)^(df - 1) on [0, pi/2): smooth and bounded, so Simpson's rule
    (n even) is accurate out in the tails too, where a t-test's p-value lies."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(math.pi)  # (of the density in phi)
    h = math.atan(x / math.sqrt(df)) / n
    f = [math.cos(i * h) ** (df - 1) for i in range(n + 1)]
    return 0.5 + math.exp(log_c) * h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))


@lru_cache(maxsize=None)
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (p > 0.5): bisection on the CDF."""
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def paired_p(diffs: list[float]) -> float | None:
    """The two-sided p-value of a paired t-test that the differences' mean is 0; None below 2. Differences
    all alike (no spread) give 0, or 1 when they are all 0."""
    if len(diffs) < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    return max(0.0, 2 * (1 - t_cdf(abs(mean) / (sd / math.sqrt(len(diffs))), len(diffs) - 1)))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together: each adjusted one below 0.05 holds with a
    family-wise error rate of 5% across all of them (Holm 1979)."""
    order = sorted(range(len(p_values)), key=p_values.__getitem__)
    adjusted, running = [1.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """(mean, half-width of the `level` confidence interval); the half-width is None below 2 values."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, t_quantile(1 - (1 - level) / 2, len(values) - 1) * sem


@dataclass
class RunRow:
    arm: Arm
    seed: int
    run_dir: str                 # relative to the ablation folder
    summary: dict | None         # its summary.json; empty (or None) before it wrote one


def interrupted(summary: dict | None) -> bool:
    """Stopped before its end (a Ctrl-C, a kill), to be resumed by the next command: not yet a result."""
    return bool(summary) and not (finished(summary) or diverged(summary) or failed(summary))


@dataclass
class ArmStats:
    arm: Arm
    n: int                       # finished seeds
    diverged: int                # seeds that diverged, left out of the figures
    failed: int                  # seeds that failed (a component's error), left out of the figures
    reason: str | None           # the first failed seed's reason, its first line
    interrupted: int             # seeds stopped before their end, not in the figures until resumed
    final: tuple
    best: tuple
    diff: tuple                  # paired final-val-loss difference to the baseline, (mean, half-width)
    paired: int                  # seeds in `diff`: those both this arm and the baseline finished
    baseline_seeds: int          # seeds the baseline finished (when more than `paired`, the means cover other seeds)
    unequal: list[str]           # fields that make it unfair to compare with the baseline (--allow-unfair)
    params: int | None
    flops_per_token: int | None
    steps: int | None
    tokens: int | None
    tokens_per_s: float | None
    wall_seconds: float | None
    diffs: list[float] = ()      # the paired differences of `diff`, one per seed
    vocab_size: int | None = None
    p_holm: float | None = None  # the paired t-test's p-value, Holm-adjusted over the arms compared
    compared_arms: int = 0       # how many arms were compared with the baseline

    @property
    def ran(self) -> int:
        """Seeds that ended, whichever way."""
        return self.n + self.diverged + self.failed

    @property
    def trouble(self) -> str:
        """"diverged on 5/8 seeds", "failed on 1/3 seeds (ComponentError: ...)", or "" when every seed that
        ran finished. Such an arm's mean covers only its surviving seeds: no better or worse is claimed."""
        parts = [f"diverged on {self.diverged}/{self.ran} seeds"] if self.diverged else []
        if self.failed:
            parts.append(f"failed on {self.failed}/{self.ran} seeds ({self.reason})")
        return "; ".join(parts)

    @property
    def verdict(self) -> str:
        """The comparison with the baseline (see `_verdict`), and a final loss well above the arm's best or
        above a uniform guess's: a run that fell apart (a learning rate too high) may be "within noise" of
        the baseline only because its seeds fell apart by different amounts."""
        (final, _), (best, _) = self.final, self.best
        notes = []
        if final and best and final > 1.1 * best:
            ratio = final / best
            notes.append(f"final val loss {ratio:.0f}x its best" if ratio >= 2 else
                         f"final val loss {ratio - 1:.0%} above its best")
        if not self.arm.baseline and self.diffs and all(d == 0 for d in self.diffs):
            seeds = "every seed" if len(self.diffs) > 1 else "its seed"
            notes.append(f"the baseline's final val loss on {seeds}, to the last bit: the change did nothing here "
                         "(the same arithmetic another way, or a window as long as the block, say)")
        if final and self.vocab_size and final > math.log(self.vocab_size):
            notes.append(f"final val loss above a uniform guess's (ln {self.vocab_size} = "
                         f"{math.log(self.vocab_size):.2f}): it learned nothing")
        return "; ".join([self._verdict, *notes])

    @property
    def _verdict(self) -> str:
        mean, half = self.diff
        if self.arm.baseline:
            return f"baseline ({self.trouble})" if self.trouble else "baseline"
        if self.trouble:
            return self.trouble
        if not self.n:
            return f"in progress ({self.interrupted} interrupted)" if self.interrupted else "not run"
        if half is None:  # fewer than two seeds paired with a finished baseline run
            return "n/a (needs 2 seeds)" if self.n < 2 else "n/a (needs 2 seeds whose baseline run finished)"
        verdict = compared(self.diffs, self.final[0])
        if verdict in ("better", "worse") and self.compared_arms > 1 and self.p_holm >= 0.05:  # one of several, by chance?
            verdict += f" (not after Holm's correction for {self.compared_arms} arms)"
        return f"{verdict}, not on equal terms ({', '.join(self.unequal)} differ)" if self.unequal else verdict


def compared(diffs: list[float], loss: float) -> str:
    """The verdict of paired differences (two or more): "within noise" when their interval holds 0 or
    their mean is within float32 rounding of `loss` (identical differences have an interval of width 0),
    else "better" (lower) or "worse". Within noise though three or more all went one way past rounding
    says so: their interval is wide because they went by very different amounts, which more seeds may settle."""
    mean, half = mean_ci(diffs)
    rounding = FLOAT_NOISE * abs(loss)
    if abs(mean) > max(half, rounding):
        return "better" if mean < 0 else "worse"
    if len(diffs) >= 3 and (all(d > rounding for d in diffs) or all(d < -rounding for d in diffs)):
        return f"within noise, though every seed was {'better' if mean < 0 else 'worse'}"
    return "within noise"


def arm_stats(rows: list[RunRow]) -> list[ArmStats]:
    """One ArmStats per arm, sorted by mean final validation loss; arms with diverged or failed seeds
    after the others (their means cover only the seeds that survived), unfinished arms last."""
    done = [r for r in rows if finished(r.summary) and r.summary.get("final_val_loss") is not None]
    base = {r.seed: r.summary["final_val_loss"] for r in done if r.arm.baseline}
    baseline = next((r.arm for r in rows if r.arm.baseline), None)
    arms = list(dict.fromkeys(r.arm.label for r in rows))
    stats, diffs_of = [], {}
    for label in arms:
        mine = [r for r in done if r.arm.label == label]
        arm = next(r.arm for r in rows if r.arm.label == label)
        broken = [r.summary for r in rows if r.arm.label == label and failed(r.summary)]

        def values(key):
            return [r.summary[key] for r in mine if r.summary.get(key) is not None]

        def first(key):
            return next(iter(values(key)), None)

        def of_model(key):  # the same for every run of the arm: a diverged or failed one's will do
            return first(key) or next((r.summary[key] for r in rows if r.arm.label == label and r.summary
                                       and isinstance(r.summary.get(key), int)), None)

        def mean(key):
            return statistics.fmean(values(key)) if values(key) else None

        diffs = diffs_of[label] = [r.summary["final_val_loss"] - base[r.seed] for r in mine if r.seed in base]
        gone = sum(r.arm.label == label and diverged(r.summary) for r in rows)
        stopped = sum(r.arm.label == label and interrupted(r.summary) for r in rows)
        reason = reason_line(broken[0].get("reason")) if broken else None
        unequal = unequal_terms(arm.recipe, baseline.recipe) if baseline is not None else []
        stats.append(ArmStats(arm, len(mine), gone, len(broken), reason, stopped, mean_ci(values("final_val_loss")),
                              mean_ci(values("best_val_loss")), mean_ci(diffs), len(diffs), len(base), unequal,
                              of_model("params"),
                              of_model("flops_per_token"), first("steps"), first("tokens"), mean("tokens_per_s"),
                              mean("wall_seconds"), diffs, of_model("vocab_size")))
    tested = [(s, p) for s in stats for p in [paired_p(diffs_of[s.arm.label])]
              if not s.arm.baseline and not s.trouble and s.diff[1] is not None and p is not None]
    for (s, _), adjusted in zip(tested, holm([p for _, p in tested])):
        s.p_holm, s.compared_arms = adjusted, len(tested)
    return sorted(stats, key=lambda s: (bool(s.trouble), s.final[0] is None, s.final[0] or 0.0))


def provenance(rows: list[RunRow], stats: list[ArmStats]) -> str:
    """What results.md needs to stand on its own: the seeds, the baseline's budget, the software that
    trained the runs, and the files that hold the rest."""
    seeds = sorted({r.seed for r in rows if r.summary})  # those that ran, whichever way they ended
    base = next((s for s in stats if s.arm.baseline and s.steps is not None), None)
    budget = f" Each baseline run: {base.steps:,} steps, {base.tokens:,} tokens." if base and base.tokens else ""
    ran = [r.summary for r in rows if r.summary]
    used = {text for r in ran if (text := software_text(r.get("software")))}
    older = sum(not isinstance(r.get("software"), dict) for r in ran)
    software = f" Trained with {'; '.join(sorted(used))}" if used else ""
    software += (f"{' and' if used else ' Trained'} {older} runs with an older gptkit, which recorded no software"
                 if older else "") + ("." if used or older else "")
    # The code of every component not built in, as the runs recorded it: a package's version and hash, a file's hash
    records = sorted({f"{key}: {what}" for r in ran if isinstance(r.get("plugins"), dict)
                      for key, what in r["plugins"].items() if isinstance(what, str)})
    software += f" Components not built in: {'; '.join(records)}." if records else ""
    data = list(dict.fromkeys(r["data"] for r in ran if isinstance(r.get("data"), str)))
    data_line = f" Data: {data[0]}." if len(data) == 1 else " Data: differs between runs (see their summary.json)." \
        if data else ""
    return (f"Seeds: {', '.join(map(str, seeds))}.{budget}{data_line}{software} The recipe is baseline.yaml, the arms "
            "and seeds ablation.yaml.")


def main_effects(rows: list[RunRow]) -> str:
    """For a grid of two or more keys: each value of each key against its reference value (the baseline's,
    else the first), the final-validation-loss difference paired by seed and by the other keys' values,
    averaged over those within each seed, then over seeds: the key's main effect. Its interval is over
    the seeds' averages: runs of one seed share their data order and initial values, so the other keys'
    cells are no independent repeats. Markdown with its legend, or "" when there is no such grid."""
    cells = [r for r in rows if len(r.arm.factors) > 1 and set(dict(r.arm.changes)) == set(r.arm.factors)]
    if not cells:
        return ""
    keys = list(cells[0].arm.factors)
    loss = {(tuple(r.arm.factors.values()), r.seed): r.summary["final_val_loss"] for r in cells
            if finished(r.summary) and r.summary.get("final_val_loss") is not None}
    levels = {k: list(dict.fromkeys(r.arm.factors[k] for r in cells)) for k in keys}
    base = next((r.arm for r in rows if r.arm.baseline), None)
    name = short_names(keys)  # as the arms' labels name them
    lines, tested = [], []  # tested: (line, p-value) of the values compared over 2 seeds or more
    for i, k in enumerate(keys):
        ref = base.factors[k] if base is not None and base.factors.get(k) in levels[k] else levels[k][0]
        for value in levels[k]:
            if value == ref:
                continue
            by_seed: dict[int, list[tuple[float, float]]] = {}
            for (cell, seed), v in loss.items():
                against = loss.get((cell[:i] + (ref,) + cell[i + 1:], seed))
                if cell[i] == value and against is not None:
                    by_seed.setdefault(seed, []).append((v, against))
            # Only seeds with every pair: an average over other cells would weigh an interaction otherwise
            every = math.prod(len(levels[j]) for j in keys if j != k)
            by_seed = {seed: pairs for seed, pairs in by_seed.items() if len(pairs) == every}
            diffs = [statistics.fmean(a - b for a, b in pairs) for pairs in by_seed.values()]
            mean, half = mean_ci(diffs)
            # As an arm with such seeds, never better or worse: its means cover only the runs that survived
            lost = [r.summary for r in cells if r.arm.factors[k] in (value, ref)
                    and (diverged(r.summary) or failed(r.summary))]
            if lost:
                verdict = "; ".join(f"{n} run{'s' if n > 1 else ''} {what}" for n, what in (
                    (sum(map(diverged, lost)), "diverged"), (sum(not diverged(x) for x in lost), "failed")) if n)
            elif half is None:
                verdict = "n/a (needs 2 seeds)"
            else:
                verdict = compared(diffs, statistics.fmean(b for pairs in by_seed.values() for _, b in pairs))
            lines.append([f"{name[k]}={value}", f"{name[k]}={ref}", fmt_ci((mean, half), signed=True),
                          f"{len(diffs)} ({sum(map(len, by_seed.values()))})", verdict])
            if not lost and half is not None:
                tested.append((lines[-1], paired_p(diffs)))
    for (line, _), adjusted in zip(tested, holm([p for _, p in tested])):  # as the arms are: one of several, by chance?
        if line[-1] in ("better", "worse") and len(tested) > 1 and adjusted >= 0.05:
            line[-1] += f" (not after Holm's correction for {len(tested)} values)"
    return ("\n## Main effects\n\n" + table(["value", "against", "Δ final val loss", "seeds (pairs)", "verdict"], lines)
            + "\n" + MAIN_EFFECTS + "\n")


MAIN_EFFECTS = ("Each value of a varied key against its reference (the baseline's value), the final validation "
                "loss difference paired by seed and by the other keys' values, averaged over the other keys' values "
                "within each seed, then over the seeds; ± is over the seeds' averages (runs of one seed share their "
                "data order and initial values: no independent repeats); seeds (pairs): the seeds whose every "
                "(seed, other values) pair has both its runs finished, and those pairs; within noise as above; a value "
                "whose runs, or its reference's, diverged or failed is neither better nor worse; a verdict that "
                "does not survive Holm's correction across the values compared says so. An "
                "interaction (a value that helps beside one value of another key and hurts beside another) is "
                "averaged away: the table above has every cell.")


def reason_line(text: str | None) -> str:
    """A failed run's recorded reason, its first line."""
    return first_line(text or "") or "no reason recorded"


def fmt_ci(mean_half: tuple, signed: bool = False) -> str:
    mean, half = mean_half
    if mean is None:
        return "-"
    text = f"{mean:+.4f}" if signed else f"{mean:.4f}"
    return text + (f" ± {half:.4f}" if half is not None else "")


def params_change(params: int, base: int, margin: float) -> tuple[float, bool]:
    """An arm's parameters relative to the baseline's (+0.05: 5% more), and whether that is past `margin`:
    a comparison of models of other sizes, flagged in the plan and the report alike."""
    rel = params / base - 1
    return rel, abs(rel) > margin


def params_cell(s: ArmStats, base: ArmStats | None, margin: float) -> str:
    if s.params is None:
        return "-"
    if base is None or base.params is None or s.arm.baseline:
        return f"{s.params:,}"
    rel, off = params_change(s.params, base.params, margin)
    return f"{s.params:,} ({rel:+.1%}){' ⚠' if off else ''}"


def markdown(stats: list[ArmStats], margin: float) -> str:
    base = next((s for s in stats if s.arm.baseline), None)
    unfair = any(s.unequal for s in stats)  # then the budgets may differ: shown beside the losses
    header = ["arm", "seeds", "final val loss", "best val loss", "Δ final vs baseline", "verdict", "params",
              "FLOPs/token", "tokens/s", "wall/run", *(["steps", "tokens"] if unfair else [])]
    rows = [[s.arm.title, seeds_cell(s), fmt_ci(s.final), fmt_ci(s.best), diff_cell(s), s.verdict,
             params_cell(s, base, margin), f"{s.flops_per_token:,}" if s.flops_per_token else "-",
             f"{s.tokens_per_s:,.0f}" if s.tokens_per_s else "-",
             fmt_duration(s.wall_seconds) if s.wall_seconds is not None else "-",
             *([count(s.steps), count(s.tokens)] if unfair else [])] for s in stats]
    return table(header, rows)


def seeds_cell(s: ArmStats) -> str:
    """"3", or "3 (5 diverged)", "0 (2 failed)", "1 (1 interrupted)": finished seeds, and those left out."""
    left_out = [f"{k} {what}" for k, what in ((s.diverged, "diverged"), (s.failed, "failed"),
                                              (s.interrupted, "interrupted")) if k]
    return f"{s.n} ({', '.join(left_out)})" if left_out else str(s.n)


def diff_cell(s: ArmStats) -> str:
    """Δ, saying over how many seeds when not over every seed the arm or the baseline ran: only seeds
    both finished are paired (and the two means, over their own seeds, may then disagree with it)."""
    if s.arm.baseline:
        return "-"
    text, of = fmt_ci(s.diff, signed=True), max(s.ran, s.baseline_seeds)
    return f"{text} ({s.paired} of {of} seeds)" if s.paired and s.paired < of else text


def count(value) -> str:
    return f"{value:,}" if value is not None else "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]) + "\n"


def csv_text(rows: list[RunRow]) -> str:
    """results.csv: one row per run, as its summary.json says, with a column per varied key (its dotted
    name) holding the run's value of it; one stopped before its end is `interrupted`,
    as results.md counts it, though a killed run's summary still says `running`, and one that diverged
    `diverged` (its summary's status is `failed`; its losses are those of before the divergence)."""
    factors = list(rows[0].arm.factors) if rows else []  # a column per varied key: its value in the run's arm
    text = io.StringIO()
    writer = csv.DictWriter(text, [*CSV_FIELDS[:2], *factors, *CSV_FIELDS[2:]], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        s = r.summary or {}
        writer.writerow({"arm": r.arm.label, "baseline": r.arm.baseline, **r.arm.factors, "seed": r.seed,
                         "run_dir": r.run_dir,
                         "status": "interrupted" if interrupted(r.summary) else "diverged" if diverged(r.summary)
                         else s.get("status", "unfinished"), **{k: s.get(k) for k in CSV_FIELDS[5:]}})
    return text.getvalue()
