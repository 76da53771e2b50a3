import click

from ..recipe import load_recipe, yaml
from . import main, overrides_option


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@overrides_option
def validate(recipe, overrides):
    """Check RECIPE and print it fully resolved, with every default filled in."""
    resolved = load_recipe(recipe, overrides)
    click.echo(yaml.dump(resolved.to_dict()), nl=False)  # validates again: a recipe named 1e5 stays a string
