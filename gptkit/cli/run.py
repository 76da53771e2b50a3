import click

from ..recipe import load_recipe
from ..training import train
from ..training.progress import fmt_duration
from . import main, overrides_option


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(),
              help="Folder that receives the run folder.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the run folder and the final figures.")
def run(recipe, overrides, runs_dir, quiet):
    """Train the model RECIPE describes.

    \b
    gptkit run recipes/shakespeare-cpu.yaml
    gptkit run recipes/shakespeare.yaml --set train.max_steps=200 --set model.positional=rope
    """
    result = train(load_recipe(recipe, overrides), runs_dir=runs_dir, quiet=quiet)
    if result.run_dir is None:  # a torchrun process other than rank 0, which reports for all
        return
    s = result.summary
    val = f"val loss {s['final_val_loss']:.4f} (best {s['best_val_loss']:.4f}), " if s["final_val_loss"] is not None else ""
    click.echo(f"Finished: {val}train loss {s['final_train_loss']:.4f}, {s['steps']:,} steps, "
               f"{s['tokens_per_s']:,.0f} tokens/s, {fmt_duration(s['wall_seconds'])} wall, "
               f"{s['params']:,} parameters")
    click.echo(f"Run folder: {result.run_dir}  (sample: gptkit sample {result.run_dir})")
