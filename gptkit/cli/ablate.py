from pathlib import Path

import click

from ..ablation.plot import HINT
from ..ablation.runner import (ablation_dir, check_arms, check_can_make, check_folder, check_no_strays, datasets,
                               describe, failures, plot, report_text, run_ablation)
from ..ablation.spec import Ablation, check_name, load_ablation, parse_seeds, plan
from ..errors import RunStopped, UserError, counted, going_on_by
from ..io import read_text
from ..recipe import yaml
from ..recipe.vary import parse_vary
from ..training.signals import interrupt_on_signals
from . import finite, folder_option, main, overrides_option, recipe_path


@main.command()
@click.argument("source", metavar="RECIPE_OR_ABLATION", type=click.Path(), callback=recipe_path)
@click.option("--vary", "vary", multiple=True, metavar="KEY=V1,V2,...",
              help="A field and the values its arms take, e.g. --vary model.positional=sinusoidal,rope. Repeatable.")
@click.option("--seeds", metavar="N|S1,S2,...",
              help="A number of seeds (the recipe's seed and the next ones) or a list.  [default: 3]")
@click.option("--grid", is_flag=True, help="Every combination of the varied values (the default).")
@click.option("--one-at-a-time", is_flag=True, help="One field changed at a time, the others at the baseline's values.")
@overrides_option
@click.option("--name", help="Names the ablation folder (default: the ablation file's or the recipe's name).")
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(), callback=folder_option,
              help="The ablation folder goes in RUNS_DIR/ablations/.")
@click.option("--out", type=click.Path(file_okay=False), callback=folder_option, help="Use exactly this ablation folder.")
@click.option("--param-margin", type=click.FloatRange(min=0), default=None, callback=finite,
              help="Flag arms whose parameter count differs from the baseline's by more than this fraction.  [default: 0.1]")
@click.option("--allow-unfair", is_flag=True,
              help="Allow varying data, block size, batch size, epochs, max_steps or evaluation fields.")
@click.option("-v", "--verbose", is_flag=True, help="Show every run's training log.")
def ablate(source, vary, seeds, grid, one_at_a_time, overrides, name, runs_dir, out, param_margin, allow_unfair,
           verbose):
    """Train every arm of an ablation for every seed and compare them.

    RECIPE_OR_ABLATION is a recipe (the baseline, varied with --vary) or an ablation file from
    recipes/ablations/. Rerunning the same command resumes: finished runs are skipped.

    \b
    gptkit ablate recipes/shakespeare-cpu.yaml --vary model.positional=sinusoidal,rope,alibi \\
        --vary model.norm=rmsnorm,layernorm --seeds 3
    gptkit ablate recipes/ablations/components-cpu.yaml
    """
    if grid and one_at_a_time:  # (a --grid/--one-at-a-time switch would take the last given, silently)
        raise UserError("--grid and --one-at-a-time: give one of them (every combination of the varied values, "
                        "or one field changed at a time)")
    ablation = from_source(Path(source))
    given = parse_vary(vary)
    for key in given:  # the file's values of a key the command line varies are not what errors name
        ablation.origin = {t: o for t, o in ablation.origin.items()
                           if t != f"--vary {key}" and t.partition("=")[0] != key}
    ablation.vary.update(given)
    ablation.origin |= {f"{k}={v}": f"--vary {k}={v}" for k, values in given.items() for v in values}
    ablation.overrides += overrides
    if seeds is not None:
        ablation.seeds = parse_seeds(seeds)
    if grid or one_at_a_time:
        ablation.mode = "grid" if grid else "one-at-a-time"
    if name is not None:
        ablation.name = check_name(name, "--name")
    ablation.param_margin = ablation.param_margin if param_margin is None else param_margin
    ablation.allow_unfair = ablation.allow_unfair or allow_unfair

    p = plan(ablation)
    folder = ablation_dir(p, runs_dir, out)
    # Said before the plan, as `gptkit run` says it before training: a folder that cannot be made or used
    # (run_ablation checks the last two again, for callers in Python).
    check_can_make(folder, out)
    check_folder(folder)
    check_no_strays(p, folder)
    margin = ablation.param_margin
    data = datasets(p)  # read once for every check before training, and let go before it
    texts = check_arms(p, data)
    arms = describe(p, margin, data)  # builds each arm's model: one that cannot run is said before the folder is named
    del data
    click.echo(f"Ablation folder: {folder}  (rerun the same command to resume)")
    click.echo(f"{counted(len(p.arms), 'arm')} × {counted(len(p.seeds), 'seed')} (seeds {', '.join(map(str, p.seeds))}) "
               f"= {counted(len(p.arms) * len(p.seeds), 'run')}, {ablation.mode}:")
    click.echo("\n".join(arms))
    again = "rerun the same gptkit ablate command"
    try:  # a run's training handles its own signals; between runs, these raise Interrupted
        with interrupt_on_signals("running the ablation"), going_on_by(again):
            rows = run_ablation(p, folder, margin, log=click.echo, verbose=verbose, texts=texts)
            click.echo("\n" + report_text(rows, margin), nl=False)
            drew = plot(folder, rows, f"{p.name}: validation loss, mean over seeds (band: min to max)")
    except RunStopped as e:  # the ablation, not the one run, is what goes on
        e.continue_with = again
        if e.run_dir is None:  # between runs, or while the reports are written: no run to name, nothing lost
            click.echo(f"\nstopped: {e}\nAblation folder: {folder}  (continue: {again})", err=True)
            click.get_current_context().exit(e.exit_code)
        raise
    click.echo(f"Wrote {folder / 'results.csv'}, {folder / 'results.md'}"
               + (f", {folder / 'loss_curves.png'}" if drew else ""))
    if not drew:
        click.echo(f"No loss_curves.png: matplotlib is not installed; {HINT}")
    failed = failures(rows)
    if failed:  # said last, so that it is not lost above the table
        raise UserError(failed)


def from_source(path: Path) -> Ablation:
    """An ablation file (it has a `recipe:` key) or a recipe to vary."""
    data, _ = yaml.load(read_text(path, "recipe or ablation"), str(path))
    if isinstance(data, dict) and "recipe" in data:
        return load_ablation(path)
    return Ablation(recipe=path)
