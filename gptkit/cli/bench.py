import json
import os

import click

from ..bench import BenchIncomplete, BenchInterrupted, format_report, run_bench
from ..errors import UserError
from . import main, overrides_option, recipe_path


@main.command()
@click.argument("recipe", type=click.Path(), callback=recipe_path)
@overrides_option
@click.option("--vary", multiple=True, metavar="KEY=V1,V2,...",
              help="Compare values of a field; repeat for every combination. The first value is the baseline.")
@click.option("--steps", default=5, show_default=True, type=click.IntRange(min=1), help="Timed steps per round.")
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=1),
              help="Untimed steps first (compilation, or its fallback to eager, happens here).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(min=1), help="Interleaved rounds; figures are medians.")
@click.option("--threads", default=None, type=click.IntRange(min=1, max=os.cpu_count() or 1),
              help="CPU threads, at most the CPUs there are; default torch's.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def bench(recipe, overrides, vary, steps, warmup, rounds, threads, as_json):
    """Measure training throughput of RECIPE, or of variants of it side by side.

    \b
    gptkit bench recipes/shakespeare.yaml --set train.batch_size=16 --vary model.attention=flash,naive
    gptkit bench recipes/shakespeare.yaml --vary train.micro_batch_size=null,auto --json

    Every variant's recipe and data are checked before anything is measured; a variant that fails while
    measured is reported as failed and the others go on. Exit codes: 0 done; 1 a variant's process died
    or failed unexpectedly; 2 a mistake in the input, or a variant's component or memory at fault;
    130 / 143 stopped by SIGINT / SIGTERM.
    """
    log = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        report = run_bench(recipe, overrides, vary, steps=steps, warmup=warmup, rounds=rounds, threads=threads, log=log)
    except BenchInterrupted as e:  # the whole rounds' figures, then the interruption's own report and exit code
        click.echo(json.dumps(e.report, indent=2) if as_json else "\n" + format_report(e.report))
        raise e.stopped from None
    except BenchIncomplete as e:  # the figures measured, then the failure (a process's death said first)
        if as_json:  # every variant, failed ones too, even when none was measured
            click.echo(json.dumps(e.report, indent=2))
        elif any(not v["failed"] for v in e.report["variants"]):  # (else the log said each failure already)
            click.echo("\n" + format_report(e.report))
        raise sorted(e.errors, key=lambda error: isinstance(error, UserError))[0] from None
    click.echo(json.dumps(report, indent=2) if as_json else "\n" + format_report(report))
