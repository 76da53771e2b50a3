"""The `gptkit` command. Each subcommand lives in its own module of this package."""

import click

from ..errors import UserError


class Group(click.Group):
    """Turns a user's mistake into one line on stderr and exit code 2, Ctrl-C into exit code 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptkit")
def main():
    """Assemble GPTs from named components, train them from YAML recipes, and compare them."""


def overrides_option(f):
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe field by dotted path, e.g. --set model.attention=naive. Repeatable.")(f)


from . import bench, run, sample, validate  # noqa: E402,F401  (registers the subcommands)
