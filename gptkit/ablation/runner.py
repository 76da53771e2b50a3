"""Running an ablation's arms × seeds into one folder, skipping the runs that already finished.

Layout: `<folder>/ablation.yaml` (what was asked), `<folder>/baseline.yaml` (the base recipe it varies,
as resolved), `<folder>/<arm>/seed-<n>/` (one run folder each), `results.csv`, `results.md`,
`loss_curves.png`. The default folder name is derived from the arms'
resolved recipes (not the seeds), so rerunning the same command finds it again and resumes; adding
seeds later reuses the finished ones.
"""

import re
import shutil
from collections.abc import Callable
from pathlib import Path

from ..data.dataset import CharDataset, load_dataset
from ..device import arithmetic, keep_random_state
from ..errors import ComponentError, Diverged, OutOfMemory, UserError, counted, failure_reason
from ..io import cannot_make_folder, quote, write_text
from ..plugins import software_changes
from ..recipe import Recipe, apply_override, flatten, yaml
from ..recipe.load import named_by_overrides, recipe_device
from ..training import train
from ..training.build import build_checked
from ..training.checkpoint import plugin_changes
from ..training.folder import (ablate_again, diverged, earlier_sessions, ended, failed, finished, run_recipe,
                               summary_of, trained_text, trained_with, val_curve)
from ..training.progress import fmt_duration
from ..training.resume import differing, is_locked
from ..training.signals import signals_held
from ..training.trainer import run_steps, schedule_warning
from .plot import plot_curves
from .report import (FLOAT_NOISE, RunRow, arm_stats, csv_text, interrupted, main_effects, markdown, params_change,
                     provenance, reason_line)
from .spec import MAY_DIFFER, Arm, Plan, refusal, yaml_text

# The baseline's recipe, resolved, which ablation.yaml names: editing the recipe the ablation was started
# from must not change the ablation its folder holds. No arm's folder is named so: theirs are `baseline`
# and names with a "-" in them (see spec.slugify), and they are folders.
BASELINE = "baseline.yaml"


def ablation_dir(plan: Plan, runs_dir: str | Path = "runs", out: str | Path | None = None) -> Path:
    if out is not None:
        return Path(out)
    folder = Path(runs_dir) / "ablations" / f"{plan.name}-{plan.digest}"
    older = folder.with_name(f"{plan.name}-{plan.older_digest}")
    return older if plan.older_digest and older.is_dir() and not folder.exists() else folder  # resumed where it is


def check_can_make(folder: Path, out: str | Path | None) -> None:
    """The ablation folder can be made (or written in, if it exists): else one error naming the flag that
    chose it (`out`: --out, else --runs-dir), before the plan is printed, rather than an OSError once it is."""
    why = cannot_make_folder(folder)
    if why is not None:
        raise cannot_create(folder, why, "pass --out with a folder that can be created" if out is not None else
                            "pass --runs-dir with a writable folder")


def cannot_create(folder: Path, why: str, fix: str = "choose another with --out or --runs-dir") -> UserError:
    return UserError(f"cannot create the ablation folder {folder}: {why}; {fix}")


def each_arm(plan: Plan, check: Callable[[Arm], None], overrides: bool = True) -> None:
    """`check(arm)` for every arm, all their errors in one (see refusal): one at a time would take a run
    of the command per mistake. With `overrides`, an error about a key names the --set or --vary that
    set it (errors of the checks against the data: a batch larger than the text)."""
    found: dict[str, list[str]] = {}
    for arm in plan.arms:
        names = [*plan.ablation.overrides, *(f"{k}={v}" for k, v in arm.changes)] if overrides else []
        try:
            with named_by_overrides(names, plan.ablation.origin):
                check(arm)
        except OutOfMemory as e:  # the machine's limit, which every later arm would meet too: said now
            raise UserError(f"arm {arm.label}: {e}" if arm.changes else str(e)) from None
        except UserError as e:
            found.setdefault(str(e), []).append(arm.label)
    if found:
        raise refusal(found, len(plan.arms))


def datasets(plan: Plan) -> dict[str, CharDataset]:
    """{arm slug: its dataset}, each distinct data section (and block size) loaded once."""
    loaded: dict[tuple[str, int], CharDataset] = {}
    out = {}

    def load(arm: Arm) -> None:
        key = (arm.recipe.data.model_dump_json(), arm.recipe.model.block_size)
        if key not in loaded:
            loaded[key] = load_dataset(arm.recipe.data, arm.recipe.model.block_size)
        out[arm.slug] = loaded[key]

    each_arm(plan, load)
    return out


def check_arms(plan: Plan, data: dict[str, CharDataset]) -> dict[str, str]:
    """What each run checks of its data (`data`, from `datasets`) before training (CharDataset.check_run),
    for every arm before any trains (else an arm fails after the others trained); returns {arm slug:
    SHA-256 of its text}."""
    each_arm(plan, lambda arm: data[arm.slug].check_run(arm.recipe.train.batch_size, arm.recipe.sample.prompt))
    return {slug: dataset.fingerprint for slug, dataset in data.items()}


def sizes(plan: Plan, data: dict[str, CharDataset]) -> dict[str, tuple[int, int]]:
    """{arm slug: (parameters, training FLOPs per token)}, for every arm before any trains, each arm's
    model built once, on its training device, and given the check `gptkit run` makes there before
    training (a forward pass; not the key/value cache, of which each run warns itself): an arm's broken
    component is named, with the arm, before the earlier arms trained rather than after. Built in turn
    and let go, with the random state put back. `data`: from `datasets`."""
    out = {}

    def size(arm: Arm) -> None:
        overrides = [*plan.ablation.overrides, *(f"{k}={v}" for k, v in arm.changes)]
        device = recipe_device(arm.recipe, overrides, plan.ablation.origin)
        with keep_random_state(device):
            model, _ = build_checked(arm.recipe, data[arm.slug].vocab_size, device, cache=False)
        out[arm.slug] = (model.num_params(), model.flops_per_token())

    each_arm(plan, size, overrides=False)
    return out


def budget(recipe: Recipe, dataset: CharDataset) -> str:
    """"600 steps, 1,228,800 tokens": what one run of `recipe` trains for."""
    steps = run_steps(recipe, dataset)
    return f"{counted(steps, 'step')}, {steps * recipe.train.batch_size * dataset.block_size:,} tokens"


def schedule_note(recipe: Recipe, dataset: CharDataset) -> str | None:
    """The runs' schedule_warning, if any: said once in the plan, not by every run (a schedule's bug is
    left for its run to name)."""
    schedule, steps = recipe.train.schedule, run_steps(recipe, dataset)
    try:
        return schedule_warning(schedule, schedule.build(steps).factor, steps)
    except Exception:
        return None


def describe(plan: Plan, margin: float, data: dict[str, CharDataset]) -> list[str]:
    """One line per arm: parameters and FLOPs per token (written as the report's table writes them), flagged
    when far from the baseline's (see `sizes`); then the steps and tokens of each run, on each arm's line
    when they differ between arms."""
    size = sizes(plan, data)
    base = size[plan.baseline.slug][0]
    budgets = {arm.slug: budget(arm.recipe, data[arm.slug]) for arm in plan.arms}
    same = len(set(budgets.values())) == 1
    width = max(len(a.title) for a in plan.arms)
    lines = []
    for arm in plan.arms:
        params, flops = size[arm.slug]
        rel, off = params_change(params, base, margin)
        flag = f"  ⚠ {rel:+.1%} parameters vs the baseline (margin {percent(margin)})" if off else ""
        lines.append(f"  {arm.title.ljust(width)}  {params:>12,} params  {flops:>12,} FLOPs/token"
                     f"{'' if same else f'  {budgets[arm.slug]}'}{flag}")
    lines += [f"Each run: {budgets[plan.baseline.slug]}"] if same else []
    lines += [f"note: {note}" for note in plan.notes]
    texts = {arm.label: data[arm.slug].describe() for arm in plan.arms}  # an arm may vary the data (--allow-unfair)
    lines += [f"Data: {texts[plan.baseline.label]}"] if len(set(texts.values())) == 1 else \
        [f"Data of {label}: {text}" for label, text in texts.items()]
    notes = {arm.label: schedule_note(arm.recipe, data[arm.slug]) for arm in plan.arms}
    if len(set(notes.values())) == 1:  # the same for every arm: said once
        note = notes[plan.baseline.label]
        return lines + ([f"warning: {note}"] if note else [])
    return lines + [f"warning: {label}: {note}" for label, note in notes.items() if note]


def percent(margin: float) -> str:
    """The parameter margin as given: 0.015 is 1.5%, where rounded to 2% an arm 1.8% off would be "more than 2%"."""
    return f"{margin * 100:g}%"


def run_ablation(plan: Plan, folder: Path, margin: float, log: Callable[[str], None] = print,
                 verbose: bool = False, texts: dict[str, str] | None = None) -> list[RunRow]:
    """Train every (arm, seed) not finished yet, seed by seed (so an interrupted ablation has whole
    seeds to compare), rewriting results.csv and results.md after each run, and when one is stopped (as
    far as it got: the next command resumes it). A run that diverges is a result too: it is reported,
    left out of the averages, and not tried again. A run that fails with its component's error, or runs
    out of memory, is reported as failed and the others go on; a rerun trains it again. The
    rows returned, and the reports, also hold the runs of other seeds that earlier commands ended in
    `folder`: fewer seeds this time drop no result. `texts`: what `check_arms` returned, if the caller
    has checked the arms already."""
    rows = [RunRow(arm, seed, f"{arm.slug}/seed-{seed}", summary_of(folder / arm.slug / f"seed-{seed}"))
            for arm, seed in earlier_runs(plan, folder) + [(arm, seed) for seed in plan.seeds for arm in plan.arms]]
    check_folder(folder)  # before anything is written: --out may name someone else's folder
    check_no_strays(plan, folder)
    texts = check_arms(plan, datasets(plan)) if texts is None else texts
    check_runs(plan, folder, texts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # what only trying shows (a pseudo file system such as /proc)
        raise cannot_create(folder, e.strerror or str(e)) from None
    write_text(folder / BASELINE, baseline_recipe(plan))  # first: ablation.yaml names it
    write_text(folder / "ablation.yaml", manifest(plan, folder, sorted({r.seed for r in rows})))
    jobs = [r for r in rows if r.seed in plan.seeds]
    earlier = sorted({r.seed for r in rows} - set(plan.seeds))
    if earlier:
        log(f"Also reported: {len(rows) - len(jobs)} runs of seeds {', '.join(map(str, earlier))}, which earlier "
            "commands ended in this folder")
    skipped = sum(ended(r.summary) for r in jobs)
    gone = sum(diverged(r.summary) for r in jobs)
    if skipped:
        log(f"{skipped} of {len(jobs)} runs finished earlier{f' ({gone} of them diverged)' if gone else ''}: "
            "skipping them")
    trained = False
    for i, row in enumerate(jobs, 1):
        if not ended(row.summary):
            try:
                train_row(row, folder, f"[{i}/{len(jobs)}] {row.arm.label}, seed {row.seed}", log, verbose)
            except KeyboardInterrupt:  # Interrupted too: stopped by the user, the reports say how far it got
                row.summary = summary_of(folder / row.run_dir)
                write_reports(folder, rows, margin)
                raise
            write_reports(folder, rows, margin)
            trained = True
    if not trained:  # every run ended earlier: reports of this command's seeds, with the earlier ones
        write_reports(folder, rows, margin)
    return rows


def train_row(row: RunRow, folder: Path, name: str, log: Callable[[str], None], verbose: bool) -> None:
    """Train one run of the ablation, its summary into `row`, logged as `name`. One that diverges, or fails
    with its component's error or for memory, is logged and recorded as such; any other error stops the
    ablation."""
    run_dir = folder / row.run_dir
    resume = continue_from(run_dir)
    log(f"{name} {'(resuming)' if resume else ''}...")
    try:
        row.summary = train(row.arm.for_seed(row.seed), run_dir=run_dir, resume=resume, quiet=not verbose).summary
    except Diverged as e:
        row.summary = summary_of(run_dir)
        log(f"{name}: {e}; left out of the averages")
    except UserError as e:
        if run_dir.parent.is_dir() and not any(run_dir.parent.iterdir()):  # its run folder was removed
            run_dir.parent.rmdir()
        row.summary = arm_failure(e, run_dir)
        if row.summary is None:
            raise
        log(f"{name} failed: {reason_line(str(e))}; left out of the averages, the other runs go on")
    else:
        s = row.summary
        log(f"{name}: val loss {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f}), "
            f"{fmt_duration(s['wall_seconds'])}")


def arm_failure(e: UserError, run_dir: Path) -> dict | None:
    """The summary of a run that failed with `e` because of its arm: a component's error, too little memory
    for it, or a UserError a plugin raised while the run trained (the run recorded it as its failure). None
    for any other error (a recipe's, a folder's), which is the ablation's to stop at."""
    reason = failure_reason(e)
    summary = summary_of(run_dir)
    if failed(summary) and summary.get("reason") == reason:
        return summary
    # A component's error or too little memory before the run's first step leaves no run folder: the failure
    # is kept in the report.
    return {"status": "failed", "reason": reason} if isinstance(e, ComponentError | OutOfMemory) else None


def failures(rows: list[RunRow]) -> str | None:
    """An error naming the runs that failed (see `arm_failure`), or None if none did."""
    bad = [r for r in rows if failed(r.summary)]
    if not bad:
        return None
    first = bad[0]
    return (f"{len(bad)} of {len(rows)} runs failed (first: {first.arm.label}, seed {first.seed}: "
            f"{reason_line(first.summary.get('reason'))}); fix the component (or, for memory, the arm's sizes), then "
            "rerun the same command to train them again")


def earlier_runs(plan: Plan, folder: Path) -> list[tuple[Arm, int]]:
    """(arm, seed) for each run in `folder` that ended (finished or diverged) with a seed this command
    does not ask for: another --seeds, or a --set seed= earlier (the folder's name does not depend on
    the seeds). In seed order, then the arms'."""
    found = []
    for index, arm in enumerate(plan.arms):
        for run_dir in (folder / arm.slug).glob("seed-*"):
            seed = re.fullmatch(r"seed-(-?\d+)", run_dir.name)
            if seed and int(seed[1]) not in plan.seeds and ended(summary_of(run_dir)):
                found.append((int(seed[1]), index, arm))
    return [(arm, seed) for seed, _, arm in sorted(found, key=lambda f: f[:2])]


def existing_runs(plan: Plan, folder: Path) -> list[tuple[Arm, int, Path]]:
    """(arm, seed, run folder) for each run folder of this ablation's arms in `folder`, whatever its seed
    and state."""
    found = []
    for arm in plan.arms:
        for run_dir in sorted((folder / arm.slug).glob("seed-*")):
            seed = re.fullmatch(r"seed-(-?\d+)", run_dir.name)
            if seed and run_dir.is_dir():
                found.append((arm, int(seed[1]), run_dir))
    return found


DELETE = "delete that run folder"


class Refused(UserError):
    """A run already in the ablation folder that this ablation may not reuse or resume: its folder, what
    is wrong with it (said after the folder) and what to do."""

    def __init__(self, run_dir: Path, problem: str, fix: str):
        fix = fix.replace(DELETE, f"{DELETE} (rm -r {quote(run_dir)})", 1)  # as check_runs says it for several
        super().__init__(f"{run_dir} {problem}; {fix}")
        # Not UserError's run_dir, which would add "continue: gptkit run --resume" to a run this refuses
        self.refused_dir, self.problem = run_dir, problem


SHOWN = 10  # refused runs named in one error; the rest are counted


def check_runs(plan: Plan, folder: Path, texts: dict[str, str]) -> None:
    """`check_existing` on every run in `folder`, before anything is written; the runs refused are named
    together in one error (a plugin upgraded refuses every run that used it), with one fix for them all.
    `texts`: what `check_arms` returned."""
    refused = []
    for arm, seed, run_dir in existing_runs(plan, folder):
        try:
            check_existing(run_dir, arm, seed, texts[arm.slug], trains=seed in plan.seeds)
        except Refused as e:
            refused.append(e)
    if len(refused) == 1:
        raise refused[0]
    if refused:
        lines = [f"  {e.refused_dir.relative_to(folder)} {e.problem}" for e in refused[:SHOWN]]
        more = [f"  and {len(refused) - SHOWN} more"] if len(refused) > SHOWN else []
        paths = " ".join(quote(e.refused_dir) for e in refused)
        raise UserError("\n".join([f"{len(refused)} runs in {folder} cannot be reused or resumed as they are:",
                                   *lines, *more, f"Delete them to train them again (rm -r {paths}), or pass --out "
                                   "with a new folder"]))


def check_existing(run_dir: Path, arm: Arm, seed: int, sha256: str, trains: bool) -> None:
    """A run already in the folder belongs to this ablation, checked before anything is written (--out may
    name another ablation's folder): one that ended is reused, and one with a checkpoint resumed, only if
    it trained exactly its arm's recipe, with the same plugin versions and text; one that failed (its
    component's error: trained again from scratch) or never saved a checkpoint (started over) only if
    it was made with its arm's recipe, as is an unfinished one this command leaves alone (`trains`: the
    command asks for its seed)."""
    recipe = arm.for_seed(seed)
    summary = summary_of(run_dir)
    if ended(summary):
        check_same(run_dir, recipe)
    elif trains and (run_dir / "checkpoint.pt").is_file() and not failed(summary):  # resumed: --resume alone would let
        check_same(run_dir, recipe, "was stopped")                          # its budget and evaluation change
    else:  # started over: only its recipe (if it wrote one) tells whose it is
        if (run_dir / "recipe.yaml").is_file():
            anew = failed(summary) or not (run_dir / "checkpoint.pt").is_file()
            check_same_recipe(run_dir, recipe, "failed" if failed(summary) else "was stopped", anew)
        return
    # Unfinished runs too: their --resume would refuse another text, but only once earlier runs trained.
    check_same_text(run_dir, arm.recipe.data.path, sha256)


def continue_from(run_dir: Path) -> Path | None:
    """An unfinished run continues exactly from its last checkpoint; one without a checkpoint, or one that
    failed (its component's error: the code may have been fixed since its checkpoint), starts over
    (unless another process is training it right now)."""
    if is_locked(run_dir):
        raise UserError(f"{run_dir} is being trained by another process (another gptkit ablate?); wait for it "
                        "to end, or stop it")
    if (run_dir / "checkpoint.pt").is_file() and not failed(summary_of(run_dir)):
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    return None


def check_folder(folder: Path) -> None:
    """Ablation files are written only into a new or empty folder, or an ablation's own."""
    if folder.is_dir() and not (folder / "ablation.yaml").is_file() \
            and any(p.name != BASELINE for p in folder.iterdir()):  # (alone: stopped before writing ablation.yaml)
        raise UserError(f"{folder} is not empty and is not an ablation folder (it has no ablation.yaml); "
                        "pass --out with a new or empty folder")


def check_no_strays(plan: Plan, folder: Path) -> None:
    """A folder with runs of arms this ablation does not have is another ablation's (an --out reused), or
    this one's named by an older gptkit (whose arm folders differed for {name: ...} values, exponents
    with + and paths): its results would be overwritten with a table that leaves those runs out."""
    arms = {arm.slug for arm in plan.arms}
    strays = sorted(d.name for d in folder.iterdir() if d.name not in arms and any(d.glob("seed-*/summary.json"))) \
        if folder.is_dir() else []
    if strays:
        more = f" and {len(strays) - 3} more" if len(strays) > 3 else ""
        raise UserError(f"{folder} holds runs of arms this ablation does not have ({', '.join(strays[:3])}{more}): "
                        "they are another ablation's, or this one's from an older gptkit that named some arms' "
                        "folders differently; pass --out with a new folder, or move those folders out of it")


def check_same(run_dir: Path, recipe: Recipe, how: str = "ended") -> None:
    """A finished (or diverged) run is reused, and an unfinished one resumed, only if it trained exactly what
    this ablation would train now, with the same versions of the plugins it uses, of gptkit and of torch."""
    check_same_recipe(run_dir, recipe, how)
    check_same_plugins(run_dir, recipe)
    check_same_software(run_dir)
    check_same_precision(run_dir, recipe)


def check_same_recipe(run_dir: Path, recipe: Recipe, how: str, anew: bool = False) -> None:
    """The run's recipe is `recipe`, but for MAY_DIFFER; else an error saying the run `how` ("ended",
    "was stopped"...) with another. A run trained `anew`, from scratch, may differ in the parameters
    `recipe` leaves to its components' defaults too: a fix to a failed component may change them."""
    stored, wanted = flatten(run_recipe(run_dir)), flatten(recipe.to_dict())
    for flat in (stored, wanted):
        if "data.path" in flat:  # absent only from a damaged recipe.yaml: reported below as a difference
            flat["data.path"] = str(Path(flat["data.path"]).resolve())
    differ = differing(stored, wanted, MAY_DIFFER)
    if anew:
        differ = [key for key in differ if not left_to_default(key, recipe, stored)]
    if differ:
        raise Refused(run_dir, f"{how} with a different recipe ({', '.join(differ[:5])} differ)",
                      f"{DELETE}, or pass --out with a new folder")


def left_to_default(key: str, recipe: Recipe, stored: dict) -> bool:
    """Whether `key` is a parameter that `recipe` does not set of a component it picks by the name that the
    flattened recipe `stored` picks it by too: one its code set (or no longer has)."""
    component, _, param = key.rpartition(".")
    spec = recipe.components().get(component)
    return spec is not None and param != "name" and stored.get(f"{component}.name") == spec.name \
        and param not in spec.params.model_fields_set


def check_same_plugins(run_dir: Path, recipe: Recipe) -> None:
    """A run is reused, or resumed, only with the plugin versions and code (and local files) it trained with:
    seeds trained with other code must not be averaged together (`gptkit run --resume` alone only warns)."""
    # Every session's: one resumed by `gptkit run --resume` with other code too
    records = [trained_with(run_dir), *earlier_sessions(summary_of(run_dir), "plugins")]
    changed = list(dict.fromkeys(c for record in records for c in plugin_changes(record, recipe)))
    if changed:
        raise Refused(run_dir, f"was trained with other plugin versions or code than are installed now "
                      f"({'; '.join(changed)})", NOT_POOLED)


def check_same_software(run_dir: Path) -> None:
    """As check_same_plugins, for gptkit's own code and torch (a run from before gptkit recorded them is
    taken as it is: nothing can tell)."""
    summary = summary_of(run_dir)
    records = [summary.get("software"), *earlier_sessions(summary, "software")]
    changed = list(dict.fromkeys(c for record in records for c in software_changes(record)))
    if changed:
        raise Refused(run_dir, f"was trained with other software than this ({'; '.join(changed)})", NOT_POOLED)


def check_same_precision(run_dir: Path, recipe: Recipe) -> None:
    """As check_same_software, for the arithmetic: train.device may differ (MAY_DIFFER), but precision auto
    trains in bf16 on a recent GPU and in fp32 elsewhere, and seeds of both are not averaged together."""
    summary, device = summary_of(run_dir), recipe_device(recipe)
    now = arithmetic(recipe.train.precision, device)
    records = [summary.get("precision"), *earlier_sessions(summary, "precision", str)]  # None: an older gptkit's
    other = list(dict.fromkeys(r for r in records if isinstance(r, str) and r != now))
    if other:
        raise Refused(run_dir, f"was trained in {' and '.join(other)} arithmetic, and would be in {now} on {device} "
                      f"(train.precision {recipe.train.precision})", "seeds of different arithmetic are not pooled: "
                      f"go on where it trained, {DELETE} to train it again here, or pass --out with a new "
                      "folder")


NOT_POOLED = f"seeds trained with different code are not pooled: {DELETE} to train it again, or pass " \
    "--out with a new folder"


def check_same_text(run_dir: Path, path: Path, sha256: str) -> None:
    """A run is reused (or resumed) only on the text it was trained on: the same data.path may now hold
    another, and seeds trained on different texts would be averaged together. A run without a
    checkpoint (one that diverged before its first) cannot tell, and is taken as it is."""
    try:
        trained = trained_text(run_dir)
    except UserError as e:
        raise UserError(f"{e}, so the text {run_dir} was trained on cannot be checked; {DELETE} "
                        f"(rm -r {quote(run_dir)}) to train it again") from None
    if trained is not None and trained != sha256:
        raise Refused(run_dir, f"was trained on another text than {path} now holds (SHA-256 {trained[:12]}... -> "
                      f"{sha256[:12]}...)", f"restore that text, {DELETE} to train it again on this one "
                      "(or the whole ablation folder), or pass --out with a new folder")


LEGEND = ("Δ: final validation loss minus the baseline's, paired by seed, over the seeds both finished (said when "
          "not every seed the arm or the baseline ran: the two means then cover different seeds); ± is the "
          "half-width of the 95% confidence interval (Student t over seeds); within noise: the interval of Δ "
          "contains 0, or Δ is within float32 rounding ({noise:g} of the loss). Though every seed was worse (or "
          "better): three or more seeds all went that way, by amounts too different to bound; more seeds may tell. "
          "Each arm is tested against the "
          "baseline at 95%; with several arms, a better or worse that does not hold under Holm's correction "
          "across them (a family-wise error rate of 5%, from each arm's paired t-test) says so. "
          "An arm with diverged or failed seeds is neither: its means cover only the seeds that finished. A "
          "final val loss above a uniform guess's (ln of the vocabulary's size) learned nothing; one whose every "
          "seed ends at the baseline's final val loss to the last bit changed nothing at these settings. "
          "⚠: parameters differ from the baseline's by more than {margin}.")
UNEQUAL = (" Not on equal terms: the arm differs from the baseline in its budget, data or evaluation "
           "(--allow-unfair); compare its steps and tokens.")


def report_text(rows: list[RunRow], margin: float, stats: list | None = None) -> str:
    """The Markdown table, its legend and the main effects: the body of results.md, as printed at the end."""
    stats = arm_stats(rows) if stats is None else stats
    legend = LEGEND.format(margin=percent(margin), noise=FLOAT_NOISE) + (UNEQUAL if any(s.unequal for s in stats) else "")
    return markdown(stats, margin) + "\n" + legend + "\n" + main_effects(rows)


def write_reports(folder: Path, rows: list[RunRow], margin: float) -> None:
    """Write results.csv and results.md, which always tell the same runs: both are rendered first, then
    written with Ctrl-C and SIGTERM held."""
    stats = arm_stats(rows)
    text = report_text(rows, margin, stats)
    done = sum(finished(r.summary) for r in rows)
    left_out = [f"{k} {what}" for k, what in ((sum(diverged(r.summary) for r in rows), "diverged"),
                                              (sum(failed(r.summary) for r in rows), "failed"),
                                              (sum(interrupted(r.summary) for r in rows), "interrupted")) if k]
    results = (f"# {folder.name}\n\n{done} of {len(rows)} runs finished{''.join(', ' + x for x in left_out)}. "
               f"{provenance(rows, stats)}\n\n{text}")
    table = csv_text(rows)
    with signals_held():
        write_text(folder / "results.csv", table)
        write_text(folder / "results.md", results)


def plot(folder: Path, rows: list[RunRow], title: str) -> bool:
    curves: dict[str, list] = {r.arm.title: [] for r in rows}  # an arm of no finished seed too: its note says why
    for r in rows:
        if finished(r.summary):
            curves[r.arm.title].append(val_curve(folder / r.run_dir))
    notes = {s.arm.title: s.trouble for s in arm_stats(rows)}  # a curve over the seeds that survived says so
    baseline = next((r.arm.title for r in rows if r.arm.baseline), None)
    return plot_curves(curves, folder / "loss_curves.png", title, notes, reference=baseline)


def baseline_recipe(plan: Plan) -> str:
    """baseline.yaml: the recipe the ablation varies as it resolved (its `set` applied, every default filled
    in, every path absolute), written as a run folder's recipe.yaml is."""
    return ("# The baseline recipe of the ablation in this folder, as resolved when it last ran; ablation.yaml's\n"
            "# `recipe`, so that a change to the recipe it was started from does not change this ablation.\n"
            + yaml.dump(plan.baseline.recipe.to_dict()))


def manifest(plan: Plan, folder: Path, seeds: list[int]) -> str:
    """ablation.yaml: an ablation file for exactly this ablation, so that it can be resumed or given more
    seeds from anywhere, with its arms' folders in comments. Its recipe is the snapshot beside it
    (baseline.yaml, relative to the file as an ablation file's recipe is), its other paths absolute. One
    line per key, each value written as gptkit's YAML reads it back (PyYAML would leave 1e5 unquoted,
    which YAML 1.2 reads as a number)."""
    a = plan.ablation
    data = {
        "name": plan.name,
        "recipe": BASELINE,
        "set": dict(_value(text) for text in a.overrides),
        "vary": {key: [_value(f"{key}={v}")[1] for v in values] for key, values in a.vary.items()},
        "mode": a.mode,
        "seeds": seeds,
        "param_margin": a.param_margin,
        "allow_unfair": a.allow_unfair,
    }
    arms = "".join(f"#   {arm.slug}/  {arm.title}\n" for arm in plan.arms)
    return (f"# Resume, or add seeds: {ablate_again(folder.resolve())}\n"
            f"# Arms (folder, label):\n{arms}" + "".join(f"{key}: {yaml_text(value)}\n" for key, value in data.items()))


def _value(override: str) -> tuple[str, object]:
    """("data.path", "/abs/x.txt") from "data.path=x.txt": the value as the recipe received it (paths
    made absolute), so that the file means the same from any folder."""
    tree: dict = {}
    keys, _ = apply_override(tree, override)
    for key in keys:
        tree = tree[key]
    return ".".join(keys), tree
