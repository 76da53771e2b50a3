import click

from ..recipe import yaml
from ..recipe.load import load_recipe, named_by_overrides, recipe_device
from ..training.run import check_data
from . import main, overrides_option, recipe_path


@main.command()
@click.argument("recipe", type=click.Path(), callback=recipe_path)
@overrides_option
def validate(recipe, overrides):
    """Check RECIPE and print it fully resolved, with every default filled in.

    Checks every field, and what `gptkit run` checks before it trains: train.device is here, data.path
    exists and is UTF-8 text with more than one block for training (and for validation),
    train.batch_size is at most its training windows per epoch, sample.prompt's characters are in its
    vocabulary, and the components accept its size. Nothing is written: a data.path that data.corpus
    would create on the first run is not created; the corpus's text is made and checked in memory
    (a note on stderr says so).
    """
    resolved = load_recipe(recipe, overrides)
    recipe_device(resolved, overrides)
    with named_by_overrides(overrides, path=recipe):
        later = check_data(resolved)
    if later:
        data = resolved.data
        click.echo(f"note: data.path {data.path} does not exist yet: the '{data.corpus.name}' corpus will "
                   "create it on the first run (its text is checked here, in memory)", err=True)
    click.echo(yaml.dump(resolved.to_dict()), nl=False)  # validates again: a recipe named 1e5 stays a string
