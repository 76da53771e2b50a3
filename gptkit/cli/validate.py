import click
import yaml

from ..recipe import load_recipe
from . import main, overrides_option


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
def validate(recipe, overrides):
    """Check RECIPE and print it fully resolved, with every default filled in."""
    resolved = load_recipe(recipe, overrides)
    click.echo(yaml.safe_dump(resolved.to_dict(), sort_keys=False, allow_unicode=True), nl=False)
