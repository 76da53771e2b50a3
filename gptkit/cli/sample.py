import contextlib
import secrets
import time
from pathlib import Path

import click

from ..device import resolve_device
from ..diagnose import blaming, check_forward, component_specs
from ..errors import Interrupted, OutOfMemory, UserError, out_of_memory_as, out_of_memory_on
from ..sampling import MAX_TOKENS, SEEDS, one_newline
from ..sampling import sample as sample_model
from ..training.checkpoint import load_model
from ..training.folder import summary_of
from ..training.resume import with_live_status
from ..training.signals import interrupt_on_sigterm
from . import finite, main, non_empty_path, stdout_dropped, stdout_full


def sampling_memory(device) -> contextlib.AbstractContextManager[None]:
    """Within it, running out of memory is one error. No option of the sample sizes it much (one row of at
    most the run's model.block_size tokens): the model does, on whatever device holds it."""

    def error(e: BaseException) -> OutOfMemory:
        on = out_of_memory_on(e, device)  # a checkpoint is loaded through the machine's memory
        elsewhere = "" if on == "cpu" else ", or sample on the CPU with --device cpu"
        return OutOfMemory(f"out of memory on {on} while sampling: the model needs more memory than it has "
                           f"free; close other programs that use it{elsewhere}")

    return out_of_memory_as(error)


class Seed(click.ParamType):
    """A whole number torch takes as a seed; its help does not spell out the 20-digit bounds."""

    name = "integer"

    def convert(self, value, param, ctx):
        number = click.INT.convert(value, param, ctx)
        if number not in SEEDS:
            self.fail(f"{value} is not a seed: use a whole number from -2**63 to 2**64 - 1", param, ctx)
        return number


def part_trained(run: Path) -> str | None:
    """'RUN is trained as far as step 18 of 40 (interrupted)' for a run folder whose summary.json says it is
    not finished: its sample is of a model partly trained."""
    folder = run if run.is_dir() else run.parent if run.name == "checkpoint.pt" else None  # (not a save_path's)
    summary = with_live_status(folder, summary_of(folder)) if folder is not None else {}
    step, total, status = (summary.get(k) for k in ("checkpoint_step", "total_steps", "status"))
    if status == "finished" or not (isinstance(step, int) and isinstance(total, int) and isinstance(status, str)) \
            or step >= total:  # (trained to its end, then failed in its final sample, say)
        return None
    return f"{run} is trained as far as step {step:,} of {total:,} ({status}): its checkpoint's model is sampled"


@main.command()
@click.argument("run_dir", type=click.Path(), callback=non_empty_path)
@click.option("--prompt", default=None,
              help="Text to continue; an empty one starts from a newline, as a speech does (printed with the "
                   "text).  [default: the run's sample.prompt]")
@click.option("--tokens", default=None, type=click.IntRange(min=0, max=MAX_TOKENS),
              help="Characters to generate.  [default: the run's sample.tokens]")
@click.option("--temperature", default=None, type=click.FloatRange(min=0), callback=finite,
              help="0 takes the likeliest character every time.  [default: the run's sample.temperature]")
@click.option("--top-k", default=None, type=click.IntRange(min=0),
              help="Sample among the k likeliest; 0: among all.  [default: the run's sample.top_k]")
@click.option("--seed", default=None, type=Seed(), help="Make the sample reproducible.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Reuse attention keys/values between tokens; --no-cache recomputes the context (same text, slower).")
def sample(run_dir, prompt, tokens, temperature, top_k, seed, device, cache):
    """Generate text from a trained model (a run folder or a checkpoint file).

    \b
    gptkit sample runs/shakespeare-cpu-20260101-120000 --prompt "ROMEO:" --tokens 300
    """
    device = resolve_device(device, "--device")
    with sampling_memory(device):  # taking the model onto the device
        # unchecked: checked below, as --cache asks; a component from another plugin version is a warning
        model, recipe, vocab = load_model(run_dir, device, check=False)
    unfinished = part_trained(Path(run_dir))
    if unfinished:
        click.echo(f"note: {unfinished}", err=True)
    s = recipe.sample  # what the run itself sampled with, unless the command line says otherwise
    prompt_given = prompt is not None
    prompt = s.prompt if prompt is None else one_newline(prompt)
    tokens = s.tokens if tokens is None else tokens
    temperature = s.temperature if temperature is None else temperature
    top_k = s.top_k if top_k is None else (top_k or None)
    try:
        vocab.encode(prompt)
    except UserError as e:
        where = "--prompt" if prompt_given else "the run's sample.prompt"
        raise UserError(f"{where} {prompt!r}: {e}") from None
    # A plugin component's bug is one error naming it: found before any text where the check before
    # training finds it, else where it is met. A key/value cache that does not match a full pass is a
    # warning: the text is then sampled by recomputing the context, which is always right.
    with sampling_memory(device):
        cache_warning = check_forward(model, recipe.model, cache=cache and bool(tokens))
    if cache_warning:
        click.echo(f"warning: {cache_warning}", err=True)

    def show(text: str) -> None:
        click.echo(text, nl=False)
        if stdout_dropped():  # `gptkit sample RUN | head -c 50`: the text is all this command makes, so it ends here
            # (raised outside any component's method: `blaming` lets it through); a full disk under it failed
            raise click.exceptions.Exit(1 if stdout_full() else 0)

    t0 = time.perf_counter()
    # Streamed as it is made (click.echo flushes): a long sample shows progress, and a Ctrl-C keeps
    # the text so far on stdout before the CLI reports the interruption.
    try:
        with blaming(component_specs(model, recipe.model), "while sampling"), sampling_memory(device), \
                interrupt_on_sigterm("sampling"):
            # Without --seed, a new draw each time on any device: a process's global CUDA generator starts
            # from the same seed every time, where the CPU's does not
            seed = secrets.randbits(64) if seed is None else seed
            sample_model(model, vocab, prompt, tokens, temperature, top_k, seed, cache, on_text=show)
    except (UserError, Interrupted):
        click.echo()  # the error, on stderr, starts a line of its own after the text so far
        raise
    seconds = time.perf_counter() - t0
    click.echo()
    if not tokens:
        return
    if not cache:
        how = "recomputed, --no-cache"
    elif cache_warning:
        how = "recomputed: the key/value cache did not match a full pass"
    elif model.supports_kv_cache:
        how = "key/value cache"
    else:
        how = "recomputed: an attention without a key/value cache"
    # On stderr, so that stdout holds the text alone.
    click.echo(f"{tokens} tokens in {seconds:.2f} s, {tokens / seconds:,.0f} tokens/s ({how})", err=True)
