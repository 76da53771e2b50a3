"""Which component is at fault: a bug in a third-party component is reported as one error naming it,
not as a traceback from deep inside the model or torch.

`check_forward` runs before training and sampling, `check_causal` before training; `blaming` turns an
exception met in a training step, a validation or a sample into the error of the plugin component
behind it, which `culprit` and `backward_culprit` find.
"""

import contextlib
import copy
import itertools
import shlex
from collections.abc import Callable, Iterator

import torch
from torch import nn

from .components.base import GPTConfig
from .components.positional import BiasShapeError, checked_bias
from .device import keep_random_state
from .errors import ComponentError, RunStopped, UserError, on_command_line, one_line, out_of_memory
from .model import GPT, built_from
from .plugins import LOCAL_PREFIX
from .recipe import yaml
from .recipe.components import MODEL_KINDS
from .recipe.schema import SHAPE_KEYS
from .registry import registry


def component_specs(gpt: GPT, model) -> dict:
    """{module: the spec in `model` (a ModelSection) it was built from}, for every component of `gpt`."""
    t = gpt.transformer
    return built_from(model, t.pos, t.h, t.ln_f)


def check_forward(gpt: GPT, model, cache: bool = True) -> str | None:
    """Small forward passes of `gpt`, which `model` (a ModelSection) described, before training: a
    component whose forward raises, or returns anything but a tensor of its input's shape and dtype, is
    named as the culprit, instead of a traceback from the training step or from whichever later layer
    trips over its output. Batches of 2 sequences of two tokens, 3 of three, and 1 of block_size; without
    gradients, in evaluation mode, and with the random state put back, so that the run that follows is
    the same as without it. With `cache`, `check_cache` follows: its warning, if any, is returned
    (sample without the cache then)."""
    training = gpt.training
    try:
        with torch.no_grad(), keep_random_state(gpt.lm_head.weight.device):
            gpt.eval()
            _check_shapes(gpt, model)
            return check_cache(gpt, model) if cache else None
    finally:
        gpt.train(training)


def _check_shapes(gpt: GPT, model) -> None:
    t = gpt.transformer
    specs = component_specs(gpt, model)

    def same_as_input(module, x, output):
        if not (isinstance(output, torch.Tensor) and output.shape == x.shape and output.dtype == x.dtype):
            raise specs[module].error(f"its forward returned {_what(output)} for an input of {tuple(x.shape)} {x.dtype}; it "
                                      "must return a tensor of its input's shape and dtype")
        finite(specs[module], "its forward", x, output)

    def embedded(x):
        B, T = idx.shape
        if not (isinstance(x, torch.Tensor) and x.shape == (B, T, gpt.config.n_embd) and x.dtype == t.wte.weight.dtype):
            raise model.positional.error(f"its embed(x, start) returned {_what(x)}; it must return a tensor of x's shape "
                                         f"and dtype, {(B, T, gpt.config.n_embd)} {t.wte.weight.dtype}")
        finite(model.positional, "its embed(x, start)", t.wte(idx), x)

    def finite(spec, what: str, x: torch.Tensor, output: torch.Tensor) -> None:
        # Else training stops at its first step as "diverged", though no update, and no learning rate, was to blame
        if torch.isfinite(x).all() and not torch.isfinite(output).all():
            raise spec.error(f"{what} returned {'nan' if output.isnan().any() else 'inf'} for a finite input (in "
                             "evaluation mode); its output must be finite")

    # Two sequences, not one: a component that reduces over the batch (x.mean(0, keepdim=True)) returns
    # another shape then, instead of passing and mixing the samples through a broadcast residual. Other
    # tokens everywhere: a component that divides by a spread over the sequence is not fed one of 0.
    # Then three sequences, and one whole block: a shape wrong only for larger batches or longer sequences
    # (x[:2], x[:, :16]) would otherwise fail in the residual sum of the first training step, where no
    # component is named, or broadcast through it. (One row of a block: no more memory than sampling needs.)
    block = gpt.config.block_size
    for B, T in ((2, min(2, block)), (3, min(3, block)), (1, block)):
        idx = torch.arange(B * T, device=gpt.lm_head.weight.device).view(B, T) % gpt.config.vocab_size
        try:
            with watching(gpt, specs, embedded, same_as_input):
                gpt(idx)
        except UserError:
            raise
        except Exception as e:
            module, method = culprit(e, specs)
            if module is None or out_of_memory(e):  # the machine's failing, not the component's
                raise
            raise (_fed_error(module, specs, "", e) or specs[module].error(_did(method, e), e)) from e


@contextlib.contextmanager
def watching(gpt: GPT, specs: dict, embedded: Callable, returned: Callable):
    """Within it, a forward pass of `gpt` hands what the positional's embed(x, start) returned (what
    `t.drop` receives) to `embedded(x)`, and each other component of `specs` its input and output to
    `returned(module, x, output)`."""
    t = gpt.transformer
    hooks = [t.drop.register_forward_pre_hook(lambda m, args: embedded(args[0]))]
    hooks += [m.register_forward_hook(lambda m, args, out: returned(m, args[0], out)) for m in specs if m is not t.pos]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


CACHE_TOKENS = 4  # check_cache's short pass: fed through the cache as a prefill of half, then one at a time
CACHE_CONTRACT = ("Through a key/value cache, attention's attend(q, k, v, bias) gets fewer queries than keys (t_q < t_k), "
                  "the queries being the last t_q positions (causal_mask(t_q, t_k, device)); the positional's "
                  "score_bias(t_q, t_k) must return (n_head, t_q, t_k), and its embed(x, start) and rotate(q, k, start) "
                  "must honour start, the position of the first token")


def check_cache(gpt: GPT, model) -> str | None:
    """When `gpt` samples through a key/value cache: the logits of a few tokens in one forward pass and
    fed through a cache as sampling feeds them (a prefill, then one token at a time) must agree to float
    rounding; then the same for a whole block, its last tokens fed one at a time, as after a window
    restart (a bug at long offsets, such as a sliding window's, shows only there). None if they do (or
    the model samples without a cache); else a one-line warning saying how they differ (or what the
    cached pass raised), naming the model's plugin components and their checks: not an error, since
    sampling by recomputing the context is always right, and the model does so from then on (the
    warning is its `cache_mismatch`: `generate` then uses no cache).
    An exception in the full pass, without the cache, is a plugin's bug, named (see `blaming`). Run by
    `check_forward`, in evaluation mode and without gradients, in fp32 matmuls."""
    gpt.cache_mismatch = None  # checked afresh: supports_kv_cache must not count an earlier check's result
    gpt.cache_mismatch = _cache_mismatch(gpt, model)
    return gpt.cache_mismatch


def _cache_mismatch(gpt: GPT, model) -> str | None:
    block = gpt.config.block_size
    if not gpt.supports_kv_cache or block < 2:
        return None
    T = min(CACHE_TOKENS, block)
    idx = torch.randint(gpt.config.vocab_size, (1, block), generator=torch.Generator().manual_seed(0), device="cpu")
    idx = idx.to(gpt.lm_head.weight.device)
    specs = component_specs(gpt, model)
    with fp32_matmuls():  # TF32 would make the two passes differ by more than rounding
        found = _mismatch(gpt, model, specs, idx[:, :T], T // 2)
        if found is None and block > T:  # costs a forward pass of the block and a prefill of nearly as many
            found = _mismatch(gpt, model, specs, idx, block - T // 2)
    return found


def _mismatch(gpt: GPT, model, specs: dict, idx: torch.Tensor, prefill: int) -> str | None:
    """How the logits of `idx` fed through a cache (`prefill` tokens, then one at a time) differ from
    one forward pass over them, as `_cache_warning`; None if they do not."""
    T = idx.size(1)
    fed = f"{T} tokens fed through a key/value cache (as {prefill}, then one at a time)"
    with blaming(specs, f"for {T} tokens"):  # without the cache: a plugin's bug, as anywhere else
        full, _ = gpt(idx)
    if not torch.isfinite(full).all():  # not the cache's doing; training will say what it is
        return None
    try:
        cached = cached_logits(gpt, idx, [0, *range(prefill, T + 1)])
    except Exception as e:
        if isinstance(e, (UserError, RunStopped)) or out_of_memory(e):
            raise
        return _cache_warning(gpt, model, f"a forward pass of {fed} raised {one_line(e)}",
                              bias_said=isinstance(e, BiasShapeError))
    if cached.shape != full.shape:
        return _cache_warning(gpt, model, f"the logits of {fed} are {tuple(cached.shape)}, not {tuple(full.shape)}")
    if not same_logits(cached, full):
        return _noise_warning(gpt, model, specs, idx) or _cache_warning(
            gpt, model, f"the logits of {fed} differ from one forward pass over them by up to "
                        f"{(cached - full).abs().max().item():.2g}")
    return None


def _noise_warning(gpt: GPT, model, specs: dict, idx: torch.Tensor) -> str | None:
    """When two forward passes over `idx` disagree, no cache can match one: the warning naming the
    component whose output differed first (its input was the same both times), instead of blaming the
    cache's contract. None if they agree. Two more passes, made only once the cache check has failed."""
    state = snapshot(gpt)
    first, second = (_outputs(gpt, specs, idx) for _ in range(2))
    (_, a), (_, b) = first[-1], second[-1]  # the logits
    if same_logits(a, b):
        return None
    written = changed_since(gpt, state)
    module = next((m for (m, x), (_, y) in zip(first, second) if not same_logits(x, y)), None)
    if written:  # the component whose output moved first may only read what another wrote
        plugins = plugin_components(model)
        who = (f"a forward pass changes {', '.join(written[:3])}{' and more' if len(written) > 3 else ''}, which no "
               "forward may write to in evaluation mode" + (f" (one of the model's plugin components does: "
                                                            f"{with_checks(plugins, model)})" if plugins else ""))
    else:
        who = _noisy(specs[module], model) if module is not None else "the model is not deterministic"
    return (f"two forward passes over the same {idx.size(1)} tokens in evaluation mode give logits that differ by up "
            f"to {(a - b).abs().max().item():.2g}: {who}. "
            "No key/value cache can match a full pass then: samples recompute the context instead")


def _outputs(gpt: GPT, specs: dict, idx: torch.Tensor, where: str | None = None,
             seed: int | None = None) -> list[tuple[nn.Module | None, torch.Tensor]]:
    """(component module, a copy of its output) for each component call of a forward pass over `idx`, in
    order, the positional's being its embed's (what `t.drop` receives); last (None, the logits). A
    plugin's error names `where` (default: the number of tokens). With `seed`, torch is seeded with it
    first: passes in training mode then share their dropout masks."""
    if seed is not None:
        torch.manual_seed(seed)
    seen = []
    with watching(gpt, specs, lambda x: seen.append((gpt.transformer.pos, x.clone())),
                  lambda m, x, out: seen.append((m, out.clone()))), blaming(specs, where or f"for {idx.size(1)} tokens"):
        seen.append((None, gpt(idx)[0]))
    return seen


def snapshot(module: nn.Module) -> dict[str, tuple]:
    """A fingerprint of each of `module`'s parameters and buffers, by name, for `changed_since`: not a copy,
    which would double a large model's memory on its device where the check runs before training."""
    return {name: _fingerprint(t) for name, t in _state(module)}


def changed_since(module: nn.Module, before: dict[str, tuple]) -> list[str]:
    """The names of `module`'s parameters and buffers that differ from their `snapshot`."""
    return [name for name, t in _state(module) if name in before and _fingerprint(t) != before[name]]


def _state(module: nn.Module):
    return itertools.chain(module.named_parameters(), module.named_buffers())


def _fingerprint(t: torch.Tensor) -> tuple:
    """The shape, and sums of the values and their squares in float64 (NaN as 0): a value written to changes
    them (a table scaled by 1.01, a counter), unless by a change that keeps both, which a forward does not."""
    x = t.detach()
    x = (torch.view_as_real(x) if x.is_complex() else x).double().nan_to_num()
    return tuple(t.shape), x.sum().item(), (x * x).sum().item()


def _noisy(spec, model) -> str:
    """Who is not deterministic, `spec` being the component whose output differed first."""
    return _who(spec, model, "is not deterministic", "differs first")


def _who(spec, model, fault: str, moved: str) -> str:
    """"feedforward 'mine' FAULT (its output MOVED); `gptkit check feedforward mine` says so", where `spec` is
    the component whose output MOVED first. An attention's output depends on its positional's rotate and
    score_bias too: gptkit's own are tested, so beside a built-in attention a plugin positional is the
    one, beside a plugin attention either of them."""
    pos = model.positional
    if spec.kind != "attention" or pos.built_in:
        return f"{spec.kind} '{spec.name}' {fault} (its output {moved}); {check_command(spec, model)} says so"
    if spec.built_in:
        return (f"positional '{pos.name}' {fault} (the output of attention '{spec.name}', which calls its rotate and "
                f"score_bias, {moved}); {check_command(pos, model)} says so")
    return (f"attention '{spec.name}' or positional '{pos.name}', whose rotate and score_bias it calls, {fault} (the "
            f"attention's output {moved}); {check_command(spec, model)} and {check_command(pos, model)} say which")


def cached_logits(gpt: GPT, idx: torch.Tensor, cuts: list[int]) -> torch.Tensor:
    """The logits of `idx` fed through a new key/value cache in the pieces between consecutive `cuts`
    (a prefill, then a token or a few at a time, as sampling feeds them), concatenated: for
    `same_logits` to compare with one forward pass over `idx`, here and in the conformance kit."""
    cache = gpt.new_cache()
    return torch.cat([gpt(idx[:, a:b], cache=cache)[0] for a, b in itertools.pairwise(cuts)], dim=1)


def same_logits(cached: torch.Tensor, full: torch.Tensor) -> bool:
    """Whether logits computed through a key/value cache are a full pass's, to float32 rounding: relative
    to the largest logit (rounding is some 1e-7 of it; 1e-4 leaves room for kernels that sum in another
    order), here and in the conformance kit. A component computing in bf16 inside differs by some 1e-2:
    its cache is taken for a broken one (generation then recomputes, which is always right)."""
    return torch.allclose(cached, full, rtol=1e-4, atol=1e-5 + 1e-4 * full.abs().max().item())


@contextlib.contextmanager
def fp32_matmuls() -> Iterator[None]:
    """Within it, float32 matmuls in full float32 (no TF32): two passes compared differ by rounding alone."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)


def randomised(module: nn.Module, buffers: bool = True, scale: float = 0.5) -> nn.Module:
    """`module`, its floating-point parameters (and buffers) moved in place by normal noise of `scale`, drawn
    on the CPU from one seeded stream (tensors of one shape, every layer's norm gain, move apart): what
    initial values hide shows then, such as a leak behind an output projection that starts at zero, or
    a state_dict that leaves out a gain that starts at one."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in [*module.parameters(), *(module.buffers() if buffers else ())]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g, device="cpu").to(t) * scale)  # (whatever the default device)
    return module


CAUSAL_TOKENS = 8  # check_causal's short sequences (it tests a whole block too)


def causal_splits(T: int) -> list[int]:
    """Where causality checks change a sequence of T tokens from: early, middle and late, so that a leak
    within blocks (bidirectional chunks of 2 or 4) crosses one of them."""
    return sorted({t for t in (1, T // 2, T - 1) if 0 < t < T})


def changed_from(idx: torch.Tensor, t: int, vocab_size: int) -> torch.Tensor:
    """A copy of the token ids `idx` (B, T) with every token from position t on replaced by another (any
    vocabulary of 2 or more)."""
    changed = idx.clone()
    changed[:, t:] = (changed[:, t:] + 1) % vocab_size
    return changed


def check_causal(gpt: GPT, model) -> None:
    """Before training a model with plugin or local components (gptkit's own are tested): changing the
    tokens of a sequence from position t on leaves the logits before t as they were, for several t, in
    evaluation and in training mode (with the same dropout masks), for a few tokens and for a whole block
    (a leak may start only past some length, as a bug at a window's edge does). A model that
    sees the future reads the tokens it is to predict: it trains to a low loss, tops any ablation and
    generates nonsense. Else a ComponentError names the component whose output moved first. Run on a
    copy of `gpt` whose parameters are moved off their initial values (a leak behind an output
    projection that starts at zero shows then), so that the model itself, its buffers and its
    components' counters, are left as they were. Nothing is said of a model whose two passes over the
    same tokens differ (check_cache's warning says that), or whose output is not finite (training says
    it diverges)."""
    V, block = gpt.config.vocab_size, gpt.config.block_size
    if not plugin_components(model) or block < 2 or V < 2:
        return
    device = gpt.lm_head.weight.device
    try:
        probe = copy.deepcopy(gpt)
    except Exception:  # a component holding what cannot be copied: `gptkit check` tests its causality
        return
    specs = component_specs(probe, model)
    idx = torch.randint(V, (2, block), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad(), keep_random_state(device), fp32_matmuls():
        randomised(probe, buffers=False, scale=0.02)  # (GPT-2's initial scale)
        short = min(CAUSAL_TOKENS, block)
        # The whole block for one sequence, not two: its passes cost seconds at a block of 1,024, every run.
        lengths = [idx[:, :short]] + ([idx[:1]] if block > short else [])
        for ids, mode in itertools.product(lengths, ("evaluation", "training")):
            T = ids.size(1)
            probe.train(mode == "training")
            moved = _leak(probe, specs, ids, f"in {mode} mode, before training")
            if moved is not None:
                module, t = moved
                over = f", over a whole block of {T} tokens" if T > CAUSAL_TOKENS else ""
                raise ComponentError(_who(specs[module], model, "lets the model see the future",
                                          f"before position {t} changed with the tokens from position {t} on, in "
                                          f"{mode} mode{over}"))


def _leak(probe: GPT, specs: dict, idx: torch.Tensor, where: str) -> tuple[nn.Module, int] | None:
    """(the component whose output before position t moved first, t) when the tokens of `idx` change from
    some t on (see causal_splits); None if none moved, or if two passes over `idx` already differ."""
    V = probe.config.vocab_size
    before, again = (_outputs(probe, specs, idx, where, seed=0) for _ in range(2))
    if not all(torch.isfinite(out).all() and same_logits(out, other) for (_, out), (_, other) in zip(before, again)):
        return None
    for t in causal_splits(idx.size(1)):
        after = _outputs(probe, specs, changed_from(idx, t, V), where, seed=0)
        moved = next((m for (m, a), (_, b) in zip(before, after) if not same_logits(a[:, :t], b[:, :t])), None)
        if moved is not None:
            return moved, t
    return None


def _cache_warning(gpt: GPT, model, what: str, bias_said: bool = False) -> str:
    """The warning of a key/value cache that does not match a full pass: `what` went wrong, the model's
    plugin components (any may be the cause: a feedforward mixing in the previous token breaks the
    cache as surely as an attention) with the check to run on each, and the contract; and a plugin
    positional's score_bias of the wrong shape, unless `what` said so (`bias_said`)."""
    plugins = plugin_components(model)
    if len(plugins) == 1:
        who = (f"{plugins[0].kind} '{plugins[0].name}', the model's only plugin component, breaks it: "
               f"{check_command(plugins[0], model)} says which of its checks fails")
    elif plugins:
        who = "one of the model's plugin components breaks it: " + with_checks(plugins, model)
    else:
        who = "the model has only gptkit's own components: a bug of gptkit's, please report it"
    note = _bias_note(gpt, 1, min(CACHE_TOKENS, gpt.config.block_size)) \
        if not (model.positional.built_in or bias_said) else ""
    return (f"{what}; {who}{note}. {CACHE_CONTRACT}. Samples recompute the context instead "
            "(slower, the same text)")


def _bias_note(gpt: GPT, t_q: int, t_k: int) -> str:
    """' (the positional's score_bias(1, 4) returned (4, 4, 4) torch.float32, not (4, 1, 4))' when its bias
    does not end in (t_q, t_k)."""
    try:
        bias = gpt.transformer.pos.score_bias(t_q, t_k)
    except Exception:  # said by the error itself, if it matters
        return ""
    if bias is None or (isinstance(bias, torch.Tensor) and tuple(bias.shape[-2:]) == (t_q, t_k)):
        return ""
    return f" (the positional's score_bias({t_q}, {t_k}) returned {_what(bias)}, not {(gpt.config.n_head, t_q, t_k)})"


def plugin_components(model) -> list:
    """The specs of `model`'s (a ModelSection's) plugin and local components, in MODEL_KINDS order."""
    return [spec for spec in (getattr(model, kind) for kind in MODEL_KINDS) if not spec.built_in]


def with_checks(specs: list, model=None) -> str:
    """"feedforward 'mine' (`gptkit check feedforward mine`); ..." for each of `specs`, parts of `model`."""
    return "; ".join(f"{spec.kind} '{spec.name}' ({check_command(spec, model)})" for spec in specs)


def check_command(spec, model=None) -> str:
    """How the caller runs the conformance checks on `spec`'s component as the run has it: with the
    parameters it was given (those not at their defaults) and, given the `model` (a ModelSection) it is a
    part of, at the model's sizes where they differ from the test model's (a fault may show only at the
    run's block size). The `gptkit check` command line, or from Python (where the component may be a
    notebook's, which no command sees) check_component."""
    from .conformance import CONFIG  # (which imports this module)

    params = spec.params.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    sizes = {} if model is None else {k: getattr(model, k) for k in SHAPE_KEYS if getattr(model, k) != getattr(CONFIG, k)}
    if not on_command_line():
        what = repr({"name": spec.name, **params}) if params else repr(spec.name)
        sized = ", ".join(f"{k}={v}" for k, v in sizes.items())
        config = f", dataclasses.replace(gptkit.conformance.CONFIG, {sized})" if sizes else ""
        return f"`gptkit.conformance.check_component({spec.kind!r}, {what}{config})`"
    local = spec.cls.__module__.startswith(LOCAL_PREFIX)
    imports = f" --import {shlex.quote(registry(spec.kind).entry(spec.name).source)}" if local else ""
    given = "".join(f" {_param(k, v)}" for k, v in params.items())
    sized = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sizes.items())
    return f"`gptkit check {spec.kind} {spec.name}{imports}{given}{sized}`"


def _param(key: str, value) -> str:
    """`--param KEY=VALUE` that reads back as `value`: a string YAML would read otherwise double-quoted, as
    gptkit's own hints quote one."""
    text = yaml.dump(value, flow=True)
    if isinstance(value, str) and text != value:
        return yaml.flag_quoted("--param", key)(value)
    return f"--param {shlex.quote(f'{key}={text}')}"


@contextlib.contextmanager
def blaming(specs: dict, where: str, backward: Callable[[BaseException], object | None] | None = None) -> Iterator[None]:
    """Within it, an exception raised by a method of a plugin or local component of `specs` ({module or
    optimizer: its ComponentSpec}) is raised again as one error naming the component and `where` it
    happened ("in training step 3", "while sampling"); any other (from gptkit's own components, which
    wants its traceback, or running out of memory) is raised unchanged. `backward(e)`, if given, names
    the module whose backward raised `e` when no frame of the traceback does (see `backward_culprit`)."""
    try:
        yield
    except Exception as e:
        error = plugin_error(e, specs, where, backward)
        if error is e:
            raise
        raise error from e


def plugin_error(e: Exception, specs: dict, where: str,
                 backward: Callable[[BaseException], object | None] | None = None) -> Exception:
    """`e` as the error `blaming` raises: naming the plugin component behind it, else `e` itself."""
    if isinstance(e, (UserError, RunStopped)) or out_of_memory(e):  # explained already, or a signal's
        return e
    owner, method = culprit(e, specs)
    if owner is None and backward is not None:
        owner, method = backward(e), "backward"
    if owner is None:
        return e
    if specs[owner].built_in:
        return _fed_error(owner, specs, f", {where},", e) or e
    return specs[owner].error(_did(method, e, where), e)


def _fed_error(owner, specs: dict, where: str, e: Exception) -> Exception | None:
    """When gptkit's own `owner` raised `e` on what a plugin component handed it (an attention, on its
    positional's rotate and score_bias): an error naming that plugin, else None. Built-in attentions pass
    their checks with every built-in positional, so the plugin is the likelier culprit."""
    spec, fed = specs[owner], specs.get(getattr(owner, "pos", None))
    if not spec.built_in or fed is None or fed.built_in:  # a plugin's own error is its own, whatever it was fed
        return None
    entry = registry(fed.kind).entry(fed.name)
    origin = f"{entry.source} ({entry.value})" if entry.value else entry.source
    return ComponentError(f"{spec.kind} '{spec.name}' (built-in) raised{where} {one_line(e)}, on what {fed.kind} "
                          f"'{fed.name}' from {origin} gave it; {check_command(fed)} tests it")


def exercise(kind: str, module: nn.Module, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """A model component's output for x (B, T, C), of x's shape. A positional module has all three of its
    hooks run, as the model and attention would run them."""
    if kind != "positional":
        return module(x)
    q = k = x.view(*x.shape[:2], n_head, -1).transpose(1, 2)  # (B, nh, T, hs)
    q, k = module.rotate(q, k, 0)  # start given: the README's signature has no default
    bias = checked_bias(module, module.score_bias(x.size(1), x.size(1)), n_head, x.size(1), x.size(1))
    embedded = module.embed(x, 0)
    if not isinstance(embedded, torch.Tensor) or embedded.shape != x.shape:  # else the sum below would broadcast it
        got = f"shape {tuple(embedded.shape)}" if isinstance(embedded, torch.Tensor) else f"a {type(embedded).__name__}"
        raise ValueError(f"embed(x, start) returned {got}; it must return x plus the positions' embeddings, of x's "
                         f"shape {tuple(x.shape)}")
    out = embedded + (q + k).transpose(1, 2).reshape(x.shape)
    return out if bias is None else out + bias.sum()


def backward_culprit(e: BaseException, specs: dict, config: GPTConfig, device: torch.device) -> nn.Module | None:
    """Which plugin component of `specs` ({module: its ComponentSpec}) raised `e` in a backward pass: a
    backward's traceback holds no frame of the forward that built the graph, so each plugin component
    (one module per spec) runs forward and backward alone on a random input, and the first whose backward
    raises the same type of error is the one. None if `e` was not raised in a backward, or if no plugin
    component's backward fails alone (a bug of gptkit's or torch's, which wants its traceback)."""
    tb, in_backward = e.__traceback__, False
    while tb is not None:
        in_backward |= tb.tb_frame.f_code is torch.autograd.backward.__code__
        tb = tb.tb_next
    if not in_backward:
        return None
    checked = set()
    for module, spec in specs.items():
        if spec.built_in or not isinstance(module, nn.Module) or id(spec) in checked:
            continue
        checked.add(id(spec))
        weights = [p for p in module.parameters() if p.requires_grad]
        dtype = weights[0].dtype if weights else torch.get_default_dtype()
        x = torch.randn(2, config.block_size, config.n_embd, device=device, dtype=dtype, requires_grad=True)
        with keep_random_state(device), torch.enable_grad():
            try:  # a copy of x, not a leaf, as in the model: an in-place op on its input fails in backward there
                y = exercise(spec.kind, module, x.clone(), config.n_head)
            except Exception:  # fails alone in its forward: not the failure met in training
                continue
            try:  # gradients returned, not accumulated: the parameters' .grad stay as they are
                torch.autograd.grad(y.float().sum(), [x, *weights], allow_unused=True)
            except type(e):
                return module
            except Exception:
                continue
    return None


def _what(value) -> str:
    """'(2, 2, 32) torch.float32' for a tensor, else its type's name: what a component returned."""
    return f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


def _did(method: str, e: BaseException, where: str = "") -> str:
    """"its forward() raised, WHERE,", or what else the culprit's `method` did to cause `e`: what precedes `e`
    in its error."""
    where = f", {where}" if where else ""
    if isinstance(e, BiasShapeError):
        return f"its {method}() returned a bias attention cannot use{where}:"
    return f"its {method}() raised{where}{',' if where else ''}"


def culprit(e: BaseException, specs: dict) -> tuple[object | None, str | None]:
    """Which component of `specs` ({module or optimizer: its ComponentSpec}) raised `e`, and in which of
    its methods: the innermost frame of the traceback that is a method of one of them (their submodules,
    torch's own layers, are passed by). A plugin's frame beats a built-in's: a plugin attention that
    calls a built-in positional's rotate() wrongly is the one to blame."""
    if isinstance(e, BiasShapeError) and e.pos in specs:  # raised by attention, on what the positional gave it
        return e.pos, "score_bias"
    calling = nn.Module.__call__.__code__.co_filename  # torch's machinery around every forward
    frames = []
    tb = e.__traceback__
    while tb is not None:
        owner, code = tb.tb_frame.f_locals.get("self"), tb.tb_frame.f_code
        spec = next((s for m, s in specs.items() if owner is m), None)
        if spec is not None:
            frames.append((not spec.built_in, owner, "forward" if code.co_filename == calling else code.co_name))
        tb = tb.tb_next
    if not frames:
        return None, None
    _, owner, method = max(reversed(frames), key=lambda f: f[0])  # the innermost plugin frame, else the innermost
    return owner, method
