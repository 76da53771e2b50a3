import dataclasses

import click
from click.core import ParameterSource

from .. import plugins
from ..conformance import CONFIG, UNSIZED, DefaultRefuses, SizeError, check_component
from ..device import resolve_device
from ..errors import UserError, did_you_mean, listing, problems
from ..recipe import yaml
from ..recipe.components import MODEL_KINDS, RecipeIssue, parse_component, written_keys
from ..registry import RegistryError, registry
from . import imports_option, main


@main.command()
@click.argument("kind")
@click.argument("name")
@imports_option
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Check with this parameter instead of its default, e.g. --param n_kv_head=2. Repeatable.")
@click.option("--device", default="cpu", show_default=True,
              help="Run the checks on this device: auto, cpu, cuda, cuda:N or mps (a component with a GPU kernel of its own).")
@click.option("--n-embd", type=click.IntRange(min=1), default=CONFIG.n_embd, show_default=True,
              help="The test model's width, for a component that refuses the default sizes.")
@click.option("--n-head", type=click.IntRange(min=1), default=CONFIG.n_head, show_default=True,
              help="The test model's number of attention heads.")
@click.option("--block-size", type=click.IntRange(min=2), default=CONFIG.block_size, show_default=True,
              help="The test model's context length.")
@click.option("--vocab-size", type=click.IntRange(min=1), default=CONFIG.vocab_size, show_default=True,
              help="The test model's number of characters (its vocabulary).")
def check(kind, name, params, device, n_embd, n_head, block_size, vocab_size):
    """Run the conformance checks on one component of any kind and print a pass/fail table (exit code 1
    if any check fails). Model components: construction, shapes and dtype, input unchanged, finite outputs, determinism
    in eval mode, backward, state_dict round trip, causality, positional offsets, attention calling its
    positional hooks, every attention x positional pairing, agreement with the reference naive
    attention, the key/value cache.
    Schedules: finite factors >= 0, a pure function of the step. Optimizers: lowering the loss, the lr
    and weight_decay set in param_groups, an exact resume from state_dict, zero_grad. Corpora: the same non-empty text.

    \b
    gptkit check attention naive
    gptkit check positional rope --param base=500
    gptkit check feedforward reglu --import my_components.py
    gptkit check schedule cosine --param warmup_steps=100
    gptkit check attention my_triton --import my_components.py --device cuda
    gptkit check norm my_grouped --import my_components.py --n-embd 48 --n-head 6
    """
    reg = registry(kind)  # an unknown kind: an error listing every kind
    sized = [f"--{key.replace('_', '-')}" for key in ("n_embd", "n_head", "block_size", "vocab_size")
             if click.get_current_context().get_parameter_source(key) is not ParameterSource.DEFAULT]
    if sized and kind in UNSIZED:
        raise UserError(f"{' and '.join(sized)}: a {kind} is checked without a test model, so there is nothing to "
                        f"size; leave {'it' if len(sized) == 1 else 'them'} out")
    spec = {"name": name}
    for text in params:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--param {text}: expected KEY=VALUE, e.g. --param eps=1e-6")
        if key.strip() == "name":
            raise UserError(f"--param {text}: the component is the NAME argument ({name}), not a parameter")
        if key.strip() in spec:
            raise UserError(f"--param {key.strip()} is given twice; give each parameter once")
        spec[key.strip()] = yaml.load(raw, f"--param {text}", yaml.flag_quoted("--param", key.strip()))[0]
    device = resolve_device(device, "--device")
    config = dataclasses.replace(CONFIG, n_embd=n_embd, n_head=n_head, block_size=block_size, vocab_size=vocab_size)
    sizes = f"n_embd={n_embd}, n_head={n_head}, block_size={block_size}, vocab_size={vocab_size}"
    try:
        _assert_known_params(kind, name, reg.get(name), params)
        _assert_valid_params(kind, name, spec, params)
        results = check_component(kind, spec, config, device=device)
    except RegistryError as e:  # unknown, broken (which its message says), or a default of the test model unusable
        if name in reg:
            raise
        raise UserError(f"{e}{'' if plugins.local_files() else '; a component in a local file: --import FILE.py'}") \
            from None
    except SizeError as e:  # past a recipe's limit: named as the option that set it, not the config's field
        raise UserError(f"--{e.key.replace('_', '-')} {e.value}: {e.reason}") from None
    except ValueError as e:  # the component's own check refuses its parameters, or the test model's sizes
        if params and not isinstance(e, DefaultRefuses) and _accepts_default_params(kind, name, config):
            # named as a recipe names its --set
            raise UserError(f"{' and '.join(f'--param {p}' for p in params)}: {kind} '{name}': {e}") from None
        raise UserError(f"{kind} '{name}' cannot be checked with the test model's sizes ({sizes}): {e}; set "
                        "others with --n-embd, --n-head, --block-size and --vocab-size") from None

    has = f"; the test model has {sizes}" if kind in MODEL_KINDS else ""
    given = f" with {', '.join(f'{k}={yaml.dump(v, flow=True)}' for k, v in spec.items() if k != 'name')}" \
        if len(spec) > 1 else ""  # which configuration passed, in saved output
    click.echo(f"{kind} '{name}'{given} from {reg.entry(name).source}{has}; on {device}")
    width = max(len(r.check) for r in results)
    for r in results:
        click.echo(f"  {r.check:<{width}}  {r.status.upper():<4}  {r.detail}".rstrip())
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "fail", "n/a")}
    click.echo(f"{counts['pass']} passed, {counts['fail']} failed, {counts['n/a']} not applicable")
    if counts["fail"]:
        raise SystemExit(1)


def _accepts_default_params(kind: str, name: str, config) -> bool:
    """Whether the component's own check accepts the test model with its default parameters: then the
    --param values are what it refuses."""
    try:
        registry(kind).check(name, config, parse_component(kind, name).params)
    except ValueError:
        return False
    return True


def _assert_valid_params(kind: str, name: str, spec: dict, params: tuple[str, ...]) -> None:
    """Values its Params refuse, each named by the --param that gave it (every one at once)."""
    try:
        parse_component(kind, spec)
    except RecipeIssue as e:
        if isinstance(e, UserError):  # BrokenParams: the component's own bug, which it names
            raise
        given = {text.partition("=")[0].strip(): text for text in params}
        found = [(f"--param {given[str(loc[0])]}: " if loc and str(loc[0]) in given else "",
                  f"{'.'.join(map(str, loc))}: {msg}" if loc else msg) for loc, msg in e.issues]
        if len(found) == 1:  # as for an unknown key: the flag, then the component
            raise UserError(f"{found[0][0]}{kind} '{name}': {found[0][1]}") from None
        order = [f"--param {text}: " for text in params]  # as the command line gives them
        found.sort(key=lambda f: order.index(f[0]) if f[0] in order else len(order))
        raise UserError(problems(f"{kind} '{name}'", [flag + what for flag, what in found])) from None


def _assert_known_params(kind: str, name: str, cls: type, params: tuple[str, ...]) -> None:
    """An unknown --param key, said with the component's parameters only: a recipe's error would list
    `name` as a valid key too, which --param refuses (NAME is the argument)."""
    keys = set(written_keys(cls.Params))
    for text in params:
        key = text.partition("=")[0].strip()
        if key not in keys:
            takes = f"its parameters: {listing(keys)}" if keys else "it takes none"
            raise UserError(f"--param {text}: {kind} '{name}' has no parameter '{key}'{did_you_mean(key, keys)}; "
                            f"{takes}")
