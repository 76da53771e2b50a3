from pathlib import Path

import click

from ..errors import UserError, counted
from ..io import home_path, quote
from ..recipe.load import load_recipe, named_by_overrides, recipe_device
from ..training import train
from ..training.resume import check_run_dir, not_a_run, with_plugin_hint
from ..training.progress import fmt_duration
from . import first_on_machine, folder_option, main, overrides_option, recipe_path


@main.command()
@click.argument("recipe", required=False, type=click.Path(), callback=recipe_path)
@overrides_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(), callback=folder_option,
              help="Folder that receives the run folder.")
@click.option("--resume", metavar="RUN_DIR|auto",
              help="Continue a run from its last checkpoint. 'auto': the newest unfinished run of RECIPE "
                   "in --runs-dir that it can resume, or a new run if there is none.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the run folder and the final figures.")
def run(recipe, overrides, runs_dir, resume, quiet):
    """Train the model RECIPE describes.

    \b
    gptkit run recipes/shakespeare-cpu.yaml
    gptkit run recipes/shakespeare.yaml --set train.max_steps=200 --set model.positional=rope
    gptkit run --resume runs/shakespeare-cpu-20260101-120000
    gptkit run recipes/shakespeare-cpu.yaml --resume auto
    torchrun --standalone --nproc_per_node 4 -m gptkit run recipes/shakespeare.yaml

    Under torchrun, every process trains a share of each batch (train.batch_size is the global batch)
    and rank 0 alone writes the run folder.

    Exit codes: 0 finished; 1 the machine failed (a file system error, another torchrun process lost); 2 a
    mistake in the input (or settings too large for memory); 3 training diverged; 4 a checkpoint could
    not be saved; 130 / 143 stopped by SIGINT / SIGTERM after saving a checkpoint (resume with --resume).
    """
    explicit = resume not in (None, "auto")
    if explicit:  # quoted, the shell leaves ~ to us
        resume = str(home_path(resume, f"--resume {resume}"))
    runs_dir_given = click.get_current_context().get_parameter_source("runs_dir") is not click.core.ParameterSource.DEFAULT
    if explicit and runs_dir_given and Path(resume).resolve().parent != Path(runs_dir).resolve() and first_on_machine():
        click.echo(f"note: --runs-dir {runs_dir} is not used: a resumed run stays in its folder, {resume}", err=True)
    if recipe is None:
        if resume == "auto":  # it finds the newest run of a recipe: which one must be said
            raise UserError("--resume auto needs the RECIPE whose newest run to continue: gptkit run RECIPE --resume "
                            "auto (or --resume RUN_DIR for one run)")
        if resume is None:
            raise UserError("give a RECIPE to run, or --resume RUN_DIR to continue a run")
        recipe = check_run_dir(resume) / "recipe.yaml"
        if not recipe.is_file():
            raise not_a_run(resume, "not a run folder (no recipe.yaml)")
    try:
        loaded = load_recipe(recipe, overrides)
    except UserError as e:  # a component the run was trained with may be unknown here: say which package it was
        if not explicit:
            raise
        raise with_plugin_hint(e, Path(resume)) from None
    recipe_device(loaded, overrides)  # here, where a --set of it is known
    # data.path not found, a batch larger than the text...: named by the line of the user's recipe, not the run's copy
    with named_by_overrides(overrides, path=None if explicit else recipe):
        result = train(loaded, runs_dir=runs_dir, quiet=quiet, resume=resume)
    if result.run_dir is None:  # a torchrun process other than rank 0, which reports for all
        return
    s = result.summary
    val = f"val loss {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f}), " if s["final_val_loss"] is not None else ""
    train_loss = f"train loss {s['final_train_loss']:.4f}, " if s["final_train_loss"] is not None else ""
    click.echo(f"Finished: {val}{train_loss}{counted(s['steps'], 'step')}, {s['tokens_per_s'] or 0:,.0f} tokens/s, "
               f"{fmt_duration(s['wall_seconds'])} wall, {s['params']:,} parameters")
    click.echo(f"Run folder: {result.run_dir}  (sample: gptkit sample {quote(result.run_dir)})")
