"""The `gptkit` command. Each subcommand lives in its own module of this package."""

import os
from pathlib import Path

import click

from .. import plugins
from ..errors import RunStopped, UserError


class Group(click.Group):
    """Turns a user's mistake into one message on stderr and exit code 2, a stopped run into its
    documented exit code, and a Ctrl-C outside training into 130."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            if e.every_rank:  # met by this process alone (its GPU's memory): the others cannot say it
                rank = os.environ.get("RANK")
                click.echo(f"error{f' (rank {rank})' if rank else ''}: {e}", err=True)
            elif os.environ.get("LOCAL_RANK", "0") == "0":  # under torchrun, once per machine, not per process
                click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except RunStopped as e:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, all stop at the same step: one says so
                click.echo(f"stopped: {e}", err=True)
            if e.run_dir is not None:
                resumable = e.resumable and (e.run_dir / "checkpoint.pt").is_file()
                hint = f"  (continue: {e.continue_with or f'gptkit run --resume {e.run_dir}'})" if resumable else ""
                click.echo(f"Run folder: {e.run_dir}{hint}", err=True)
            ctx.exit(e.exit_code)
        except OSError as e:  # the machine's, not the user's: a full disk, a vanished folder
            click.echo(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptkit")
@click.option("--no-plugins", is_flag=True,
              help="Use built-in components only; ignore installed packages' (same as GPTKIT_NO_PLUGINS=1).")
def main(no_plugins):
    """Assemble GPTs from named components, train them from YAML recipes, and compare them."""
    if no_plugins:
        plugins.switch_off()


def imports_option(f):
    """--import FILE: a local component file, as a recipe's `imports:` names one."""

    def load(ctx, param, paths):
        for path in paths:
            plugins.import_file(Path(path).absolute())
        return paths

    return click.option("--import", "imports", multiple=True, metavar="FILE.py", callback=load, expose_value=False,
                        help="Register the components of a local file first (as a recipe's imports). Repeatable.")(f)


def overrides_option(f):
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe field by dotted path, e.g. --set model.attention=naive. Repeatable.")(f)


from . import ablate, bench, check, compare, components, run, sample, validate  # noqa: E402,F401  (registers the subcommands)
