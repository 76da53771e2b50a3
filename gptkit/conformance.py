"""The contract every component must meet, as checks that run on any registered component of any kind.

gptkit's own tests run these over the whole registry; `gptkit check KIND NAME` runs them on one
component, and a plugin's test suite can call `check_component` or `assert_conformant` directly.
"""

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import TypeAdapter, ValidationError

from .components.attention import KVCache, caches, why_not_cached
from .components.base import GPTConfig, Params
from .components.positional import Positional, checked_bias
from .components.schedule import factor_rule, is_factor
from .device import keep_random_state, resolve_device, torch_defaults
from .diagnose import (CACHE_CONTRACT, cached_logits, causal_splits, changed_from, changed_since, exercise,
                       fp32_matmuls, randomised, same_logits, snapshot)
from .errors import UserError, first_line, listing, on_command_line, out_of_memory, out_of_memory_as, out_of_memory_on
from .model import build_model
from .recipe.components import MODEL_KINDS, ComponentSpec, RecipeIssue, parse_component, undeclared_hint
from .recipe.schema import CONFIG_KEYS, ModelSection
from .registry import RegistryError, registry
from .training.checkpoint import state_dict_mismatch, unloadable
from .training.optim_setup import build_optimizer, flat_gradients, param_groups, set_lr

PAIRED = ("attention", "positional")  # each must work with every component of the other kind
CONFIG = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
UNSIZED = ("schedule", "corpus")  # kinds whose checks build no test model (an optimizer's train one)


@dataclass
class Result:
    check: str
    status: str  # "pass", "fail" or "n/a"
    detail: str = ""


class NotApplicable(Exception):
    pass


def tiny_model(config: GPTConfig = CONFIG, **components):
    """A small GPT with the given components (names or specs) and defaults for the rest."""
    section = ModelSection(n_embd=config.n_embd, n_head=config.n_head, n_layer=config.n_layer,
                           block_size=config.block_size, dropout=config.dropout, **components)
    return build_model(section, config.vocab_size)


def tokens(config: GPTConfig, batch: int = 3) -> torch.Tensor:
    """A fixed batch of random token ids, one block long."""
    ids = torch.randint(0, config.vocab_size, (batch, config.block_size), generator=torch.Generator().manual_seed(0),
                        device="cpu")
    return ids.to(torch.get_default_device())


def _module(spec: ComponentSpec, config: GPTConfig):
    if spec.kind == "attention":
        return spec.build(config, parse_component("positional", "none").build(config))
    return spec.build(config)


def _input(config: GPTConfig) -> torch.Tensor:
    return _randn((3, config.block_size, config.n_embd), generator=torch.Generator().manual_seed(1))


def _randn(size: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Drawn on the CPU, so the same numbers on any device, then put on the device checked on (the
    default device within `check_component`)."""
    return torch.randn(size, generator=generator, device="cpu").to(torch.get_default_device())


# ---- the checks ------------------------------------------------------------------------------
# A failing check raises AssertionError explicitly, never with an `assert` statement: `python -O` strips
# those, and every broken component would pass.
def check_construct(spec, config):
    module = _module(spec, config)
    if not isinstance(module, torch.nn.Module):
        raise AssertionError(f"built a {type(module).__name__}, not a torch.nn.Module")


def check_shape_and_dtype(spec, config):
    x = _input(config)
    y = exercise(spec.kind, _module(spec, config), x, config.n_head)
    if not isinstance(y, torch.Tensor):  # (a tuple: a forward written like a module that also returns state)
        raise AssertionError(f"output is a {type(y).__name__}; it must be a tensor of its input's shape and dtype")
    if y.shape != x.shape:
        raise AssertionError(f"output shape {tuple(y.shape)}, expected {tuple(x.shape)}")
    if y.dtype != x.dtype:
        raise AssertionError(f"output dtype {y.dtype}, expected {x.dtype}")


def check_input_unchanged(spec, config):
    """Its input is left as it was: in the model a norm's input is the residual stream, which every later
    block reads (and a positional's q and k are views of one tensor), so an in-place change (x.mul_(2)
    before a norm that is blind to scale) would pass every other check."""
    x = _input(config)
    given = x.clone()
    exercise(spec.kind, _module(spec, config), x, config.n_head)
    if not torch.equal(x, given):
        raise AssertionError("it changed its input in place; compute a new tensor instead (x * 2, not x.mul_(2))")


NOT_FINITE = "output has NaN or inf"
NOT_DETERMINISTIC = "not deterministic in eval mode"


def check_finite(spec, config):
    y = exercise(spec.kind, _module(spec, config), _input(config) * 10, config.n_head)
    if not torch.isfinite(y).all():
        raise AssertionError(NOT_FINITE)


def check_deterministic(spec, config):
    """The same input twice in evaluation mode gives the same output: else the checks that compare two
    passes (causal, the state_dict round trip, the key/value cache) would blame what is only noise."""
    module = _module(spec, config).eval()
    x = _input(config)
    with torch.no_grad():
        a, b = (exercise(spec.kind, module, x, config.n_head) for _ in range(2))
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):  # NaN equals nothing, not even itself
        raise AssertionError(NOT_FINITE)
    if not same_logits(a, b):
        raise AssertionError(f"{NOT_DETERMINISTIC}: two passes over the same input differ by {(a - b).abs().max():.2e}")
    # In the model too: a forward that writes to another component's tables (the positional's, which attention
    # holds) passes alone, then makes the model's passes differ. After a first pass, which may fill a cache.
    model = tiny_model(config, **{spec.kind: spec}).eval()
    with torch.no_grad():
        model(tokens(config))
        state = snapshot(model)
        model(tokens(config))
    written = changed_since(model, state)
    if written:
        raise AssertionError(f"{NOT_DETERMINISTIC}: an evaluation-mode pass of the test model changed "
                             f"{', '.join(written[:3])}; a forward must not write to parameters or buffers, its own "
                             "or another component's (state a training step changes may change in training mode)")


def check_backward(spec, config):
    model = tiny_model(config, **{spec.kind: spec})
    _, loss = model(tokens(config), tokens(config))
    if not torch.isfinite(loss):  # else the first parameter's gradient, the embedding's, would be blamed
        raise AssertionError(f"the loss of a forward pass is {loss.item()}: no gradient can be finite")
    loss.backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen on purpose: training leaves it alone too
            continue
        if p.grad is None:
            raise AssertionError(f"{name} got no gradient")
        if not torch.isfinite(p.grad).all():
            raise AssertionError(f"{name} has a non-finite gradient")


def check_state_dict_round_trip(spec, config):
    """A copy loaded from the state_dict of a model that has trained computes what that model computes:
    after a forward pass in training mode (state a step changes, a running statistic, must be saved) and
    with the parameters moved off their initial values (a gain left out of the state_dict would start at
    one in both, and agree)."""
    torch.manual_seed(0)
    a = tiny_model(config, **{spec.kind: spec}).train()
    a(tokens(config), tokens(config))
    randomised(a, buffers=False, scale=0.02).eval()
    torch.manual_seed(1)
    b = tiny_model(config, **{spec.kind: spec}).eval()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = tokens(config)
    if not torch.equal(a(x)[0], b(x)[0]):
        raise AssertionError("a copy loaded from state_dict computes something else")


def _assert_causal(model, config):
    """Changing the tokens from position t on, for several t, leaves every output before t as it was
    and changes every output from t on (so a model that ignores its input cannot pass). In training
    mode too (the test model has no dropout; torch is seeded alike before each pass, so randomness drawn
    from its generator is drawn alike): a model that sees the future there learns to read its targets.
    On a copy with the parameters moved off their initial values, as the check before a run moves them: a
    leak behind a projection that starts at zero shows then."""
    try:
        model = copy.deepcopy(model)
    except Exception:  # a component holding what cannot be copied (a lock, a file): checked in place
        pass
    randomised(model, buffers=False, scale=0.02)
    x = tokens(config)
    T = config.block_size

    def logits(ids):
        torch.manual_seed(0)
        with torch.no_grad():
            return model(ids)[0]

    for mode in ("eval", "train"):
        getattr(model, mode)()
        before, again = logits(x), logits(x)
        if not same_logits(again, before):  # no leak to tell when the same tokens give other outputs
            raise AssertionError(f"two passes over the same tokens in {mode} mode differ by "
                                 f"{(again - before).abs().max():.2e}: a forward pass changes state its next one "
                                 "reads (a counter, a buffer or parameter written to), or draws random numbers "
                                 "from a generator of its own, so causality cannot be told")
        for t in causal_splits(T):
            after = logits(changed_from(x, t, config.vocab_size))
            if not torch.allclose(before[:, :t], after[:, :t], atol=1e-6):  # float32 rounding: a small leak grows
                raise AssertionError(f"changing a later token changed an earlier output ({mode} mode, tokens from "
                                     f"position {t} on changed)")
            same = [p for p in range(t, T) if torch.allclose(before[:, p], after[:, p])]
            if same:
                raise AssertionError(f"changing the tokens from position {t} on left the outputs at positions {same} "
                                     f"unchanged ({mode} mode)")


def _assert_cache_matches(model, config):
    """A prefix, then a few tokens at once, then one at a time through the cache: the logits of one
    forward pass over the whole sequence. With the parameters randomised: a cache bug can hide behind
    initial values (a learned scale that starts at 1, applied to full passes only). Less randomised when
    the logits overflow: a model without norms (an identity "norm" ablated) grows layer by layer."""
    x = tokens(config)
    t = config.block_size // 2
    cuts = [0, t, t + 3, *range(t + 4, config.block_size + 1)]
    initial = copy.deepcopy(model.state_dict())
    for scale in (0.5, 0.05, 0.0):
        model.load_state_dict(initial)
        randomised(model, buffers=False, scale=scale)  # buffers hold tables and masks, not what training changes
        with torch.no_grad():
            full = model(x)[0]
        if torch.isfinite(full).all():
            break
    else:
        raise AssertionError(f"{NOT_FINITE}: the logits of a forward pass, with the initial parameters too")
    with torch.no_grad():
        cached = cached_logits(model, x, cuts)
    if not same_logits(cached, full):
        raise AssertionError(f"cached logits differ from a full forward pass by {(cached - full).abs().max():.2e}. "
                             f"{CACHE_CONTRACT}")


def check_causal(spec, config):
    """Every kind: a norm or feedforward that pooled over time would leak the future as surely as an attention."""
    if config.vocab_size < 2:
        raise NotApplicable("with a vocabulary of one character, no later token can change")
    _assert_causal(tiny_model(config, **{spec.kind: spec}), config)


def check_every_partner(spec, config):
    """An attention must work with every positional scheme (its rotate and score_bias hooks), and a
    positional scheme with every attention: finite loss and gradients, causal, and the same logits
    through the key/value cache, for each pair."""
    return _with_every_partner(spec, config, lambda partner: _assert_pair_works(spec, partner, config))


def _assert_pair_works(spec, partner, config):
    model = tiny_model(config, **{spec.kind: spec, partner.kind: partner})
    _, loss = model(tokens(config), tokens(config))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not (torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)):
        raise AssertionError("non-finite loss or gradient")
    if config.vocab_size > 1:  # (one character: no later token can change)
        _assert_causal(model, config)
    if model.supports_kv_cache:  # a partner's rotation or bias must continue from the cache's length
        _assert_cache_matches(model.eval(), config)


def _with_every_partner(spec, config, test: Callable, hint: str = "") -> str:
    """test(partner) for every working partner of the other paired kind, reporting every failing one,
    not just the first; the partners left out go in the note (or the failure)."""
    other = "positional" if spec.kind == "attention" else "attention"
    failures, skipped = [], []
    for name, partner in _partners(other, config, skipped):
        try:
            test(partner)
        except NotApplicable:
            raise
        except Exception as e:
            failures.append(f"{other} {name}: {type(e).__name__}: {e}")
    if failures:
        raise AssertionError("; ".join(failures + skipped) + hint)
    return "; ".join(skipped)


# A partner's own checks that a pairing relies on, each run with the default for the other kind.
PARTNER_SCREEN = ("backward", "deterministic", "causal", "offsets", "uses positional", "kv cache")


def _partners(kind: str, config: GPTConfig, skipped: list[str]):
    """(name, spec) of every registered `kind` that can be built with the test sizes and passes its
    own PARTNER_SCREEN checks: a plugin broken on its own is its own failure, not every other
    component's (its name and first failure go to `skipped`)."""
    for name in registry(kind).names():
        broken = registry(kind).entry(name).error
        if broken:  # reported on its own, not against another component
            skipped.append(f"{kind} {name} skipped: unusable ({first_line(str(broken))})")
            continue
        try:
            partner = parse_component(kind, name)
            registry(kind).check(name, config, partner.params)
        except ValueError as e:  # this pair cannot be built with the test sizes (a recipe would refuse it too)
            skipped.append(f"{kind} {name} skipped: it refuses the test sizes ({e})")
            continue
        except RegistryError:  # the partner's own check is broken: its failure, not this component's
            continue
        own = next((r for r in (run_check(c, partner, config) for c in PARTNER_SCREEN) if r.status == "fail"), None)
        if own:
            skipped.append(f"{kind} {name} skipped: broken on its own ({own.check}: {own.detail})")
            continue
        yield name, partner


def check_matches_naive(spec, config):
    """Same weights and inputs as the reference `naive` attention: the same outputs and gradients. An
    attention with every positional scheme (it must apply their rotations and biases), a positional
    scheme under `flash`. An attention that computes another function on purpose opts out with
    `matches_naive = False`."""
    if spec.kind == "attention" and spec.name == "naive":
        raise NotApplicable("naive is the reference attention")
    if spec.kind == "positional":
        _assert_matches_naive("flash", spec, config)
        return None
    if not spec.cls.matches_naive:
        raise NotApplicable(f"{spec.cls.__name__} sets matches_naive = False: "
                            "it computes another function than naive attention")
    return _with_every_partner(spec, config, lambda positional: _assert_matches_naive(spec, positional, config),
                               hint=". An attention meant to compute another function (a sliding window, say) sets "
                                    "matches_naive = False on its class")


def _assert_matches_naive(attention, positional, config):
    models = []
    for a in ("naive", attention):
        torch.manual_seed(0)
        models.append(tiny_model(config, attention=a, positional=positional))
    reference, model = models
    try:  # parameters of its own (a learned temperature, say) keep their initial values
        unexpected = model.load_state_dict(reference.state_dict(), strict=False).unexpected_keys
    except RuntimeError as e:  # torch says it of a checkpoint: here, naive attention's weights
        unexpected = [re.sub(r"^size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                             r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)\.?$",
                             r"\1 is \3 here, \2 in naive attention", state_dict_mismatch(e))]
    if unexpected:
        raise NotApplicable(f"weights are not interchangeable with naive attention's: {unexpected[0]}")
    x = tokens(config)
    (out_ref, loss_ref), (out, loss) = reference(x, x), model(x, x)
    loss_ref.backward()
    loss.backward()
    if not torch.allclose(out, out_ref, atol=1e-5, rtol=1e-4):
        raise AssertionError(f"outputs differ from naive attention by {(out - out_ref).abs().max():.2e}")
    grads_ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if name not in grads_ref:  # its own parameter: nothing to compare with
            continue
        diff = (p.grad - grads_ref[name].grad).abs().max()
        if not torch.allclose(p.grad, grads_ref[name].grad, atol=1e-5, rtol=1e-4):
            raise AssertionError(f"gradient of {name} differs from naive attention by {diff:.2e}")


def check_offsets(spec, config):
    """A positional scheme's hooks asked for positions s.. (what a key/value cache continues from)
    give the tail of what they give for positions 0..; with every parameter and buffer randomised,
    as tables that start at zero hide an ignored offset."""
    pos = randomised(_module(spec, config))
    T, s, g = config.block_size, config.block_size // 2 + 1, torch.Generator().manual_seed(2)
    x = _randn((2, T, config.n_embd), generator=g)
    q, k = (_randn((2, config.n_head, T, config.head_dim), generator=g) for _ in range(2))
    with torch.no_grad():
        _assert_same(pos.embed(x[:, s:], s), pos.embed(x, 0)[:, s:], f"embed(x[:, {s}:], start={s})")
        (q_s, k_s), (q_0, k_0) = pos.rotate(q[:, :, s:], k[:, :, s:], s), pos.rotate(q, k, 0)
        _assert_same(q_s, q_0[:, :, s:], f"rotate(..., start={s}) of q")
        _assert_same(k_s, k_0[:, :, s:], f"rotate(..., start={s}) of k")
        tail, whole = pos.score_bias(T - s, T), pos.score_bias(T, T)
        if (tail is None) != (whole is None):
            raise AssertionError("score_bias is None for some shapes only")
        if whole is not None:  # as attention adds them, broadcast: (n_head, 1, t_k) serves every query
            nh = config.n_head
            tail = checked_bias(pos, tail, nh, T - s, T).expand(1, nh, T - s, T)
            whole = checked_bias(pos, whole, nh, T, T).expand(1, nh, T, T)
            _assert_same(tail, whole[..., s:, :], f"score_bias({T - s}, {T})")


def check_tells_positions_apart(spec, config):
    """With the same token at every position, what the scheme gives attention differs from one position
    to the next: its embed of x, its rotate of q and k, or its score_bias over the keys of the last
    query; with its parameters randomised, as a learned table may start at zero (its fixed tables, its
    buffers, are its design). Else an ablation against `none` would compare two models that cannot
    tell positions apart, without a word."""
    if not spec.cls.encodes_position:
        raise NotApplicable(f"{spec.cls.__name__} sets encodes_position = False: it adds no positional information")
    pos, T = randomised(_module(spec, config), buffers=False), config.block_size
    x = _randn((1, 1, config.n_embd), generator=torch.Generator().manual_seed(3)).expand(1, T, -1).contiguous()
    q = x.view(1, T, config.n_head, config.head_dim).transpose(1, 2)  # (1, nh, T, hs), every position alike
    with torch.no_grad():
        given = {"embed": (pos.embed(x, 0), 1), **dict(zip(("rotate of q", "rotate of k"),
                                                            ((t, 2) for t in pos.rotate(q, q.clone(), 0))))}
        bias = pos.score_bias(T, T)
        if bias is not None:
            given["score_bias"] = (bias[..., -1, :], -1)  # the last query sees every key
    if not any(_varies(t, dim) for t, dim in given.values()):
        raise AssertionError(f"with the same token at each of {T} positions, its {', '.join(given)} give every "
                             "position the same: the model cannot tell positions apart; a scheme meant to add no "
                             "positional information sets encodes_position = False on its class")


def _varies(t: torch.Tensor, dim: int) -> bool:
    """Whether `t` differs along `dim` by more than rounding."""
    first = t.narrow(dim, 0, 1)
    return bool(((t - first).abs().max() > 1e-6 * (1 + first.abs().max())).item())


def check_fewer_key_heads(spec, config):
    """rotate(q, k) returns q and k each in its own shape, k having fewer heads than q as grouped- or
    multi-query attention hands it: keys broadcast to every head would fill the cache as many times."""
    pos, g = _module(spec, config), torch.Generator().manual_seed(2)
    T = min(5, config.block_size)  # (positions past the block have no table)
    q, k = _randn((2, config.n_head, T, config.head_dim), generator=g), _randn((2, 1, T, config.head_dim), generator=g)
    heads = f"k of {k.size(1)} head and q of {q.size(1)}, as multi-query attention hands them"
    try:
        with torch.no_grad():
            q_r, k_r = pos.rotate(q, k, 0)
    except Exception as e:
        raise AssertionError(f"rotate(q, k) with {heads}, raised {type(e).__name__}: {e}") from e
    if (q_r.shape, k_r.shape) != (q.shape, k.shape):
        raise AssertionError(f"rotate(q, k) with {heads}, returned shapes {tuple(q_r.shape)} and {tuple(k_r.shape)}; "
                             "it must return each in its own shape")


def _assert_same(part, whole, what):
    if part.shape != whole.shape:
        raise AssertionError(f"{what} has shape {tuple(part.shape)}, expected {tuple(whole.shape)}")
    if not same_logits(part, whole):  # to rounding: a table computed on the fly may round otherwise at another start
        raise AssertionError(f"{what} is not the matching part of the whole sequence's (off by "
                             f"{(part - whole).abs().max():.2e})")


class _Spy(Positional):
    """A positional scheme that records what attention asks of it and adds a zero bias."""

    def __init__(self, config):
        super().__init__(config, Params())
        self.n_head, self.calls = config.n_head, []

    def rotate(self, q, k, start=0):
        self.calls.append(("rotate", q.size(-2), start))
        return q, k

    def score_bias(self, t_q, t_k):
        self.calls.append(("score_bias", t_q, t_k))
        return torch.zeros(self.n_head, t_q, t_k)


def check_uses_positional(spec, config):
    """An attention hands its positional partner the right positions: rotate(q, k, start) with the
    cache's length, score_bias(t_q, t_k) with the keys' count. One that ignores them passes every
    other check with no positional at all, and silently learns without positions."""
    T, t = config.block_size, config.block_size // 2
    attn = spec.build(config, _Spy(config)).eval()
    x = _randn((2, T, config.n_embd), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attn(x)
        expected = [("rotate", T, 0), ("score_bias", T, T)]
        if caches(attn):
            cache = KVCache()
            attn(x[:, :t], cache)
            attn(x[:, t:], cache)
            expected += [("rotate", t, 0), ("score_bias", t, t), ("rotate", T - t, t), ("score_bias", T - t, T)]

    def each_hook(calls):  # in order for each hook, whichever of them the attention asks first
        return {hook: [c for c in calls if c[0] == hook] for hook in ("rotate", "score_bias")}

    if each_hook(attn.pos.calls) != each_hook(expected):
        raise AssertionError(f"expected the calls {expected} (rotate and score_bias in either order), got "
                             f"{attn.pos.calls}")


def check_kv_cache(spec, config):
    """Feeding a prefix, then a few tokens at once, then one at a time through a key/value cache,
    gives the logits of one forward pass over the whole sequence, with the parameters randomised. Every
    kind: a norm or feedforward that computes otherwise on one position breaks generation too."""
    model = tiny_model(config, **{spec.kind: spec}).eval()
    if not model.supports_kv_cache:
        why = why_not_cached(model.transformer.h[0].attn)
        raise NotApplicable(f"the attention takes no key/value cache ({why}); generation recomputes the context")
    _assert_cache_matches(model, config)


# ---- the checks of the kinds that are not part of the model -------------------------------------
TOTAL_STEPS = (1, 2, 10, 1000)


def check_factors(spec, config):
    """factor(step) for every step of runs of several lengths is a finite number >= 0: the trainer
    multiplies train.lr by it."""
    for total in TOTAL_STEPS:
        for step, f in enumerate(_factors(spec, total, range(total))):
            if not is_factor(f):
                raise AssertionError(f"factor({step}) = {f!r} with total_steps={total}; a factor {factor_rule(f)}")


def check_pure_function_of_step(spec, config):
    """A fresh schedule asked for the steps backwards gives the same factors: a resumed run builds a
    new one and asks from the middle on."""
    for total in TOTAL_STEPS:
        forwards, backwards = _factors(spec, total, range(total)), _factors(spec, total, reversed(range(total)))
        differ = [s for s, (a, b) in enumerate(zip(forwards, reversed(backwards))) if a != b and a == a]  # NaN: "factors"
        if differ:
            raise AssertionError(f"factor({differ[0]}) with total_steps={total} is {forwards[differ[0]]!r} asked in "
                                 f"order, {backwards[total - 1 - differ[0]]!r} asked by a fresh schedule from the "
                                 "last step back")


def _factors(spec, total_steps, steps):
    schedule = spec.build(total_steps)
    return [schedule.factor(step) for step in steps]


LR = 1e-2  # the tiny GPT's loss drops within a few steps of AdamW or Muon at this rate


def check_lowers_the_loss(spec, config):
    """A few steps on a fixed batch of the test model lower its loss, at one of a few learning rates
    (each optimizer has its own good range: RMSprop overshoots at AdamW's)."""
    tried = []
    for lr in (LR, LR / 10, LR / 100):
        model = _seeded_model(config)
        losses = _train(model, _optimizer(spec, model, lr), config, steps=6, lr=lr)
        if losses[-1] < losses[0]:
            return None
        tried.append(f"{losses[0]:.4f} to {losses[-1]:.4f} at lr {lr:g}")
    raise AssertionError(f"{len(losses) - 1} steps did not lower the loss: {'; '.join(tried)}")


def check_honours_lr(spec, config):
    """The learning rate the trainer sets in param_groups each step (the schedule's) is the one used:
    at lr 0 the weights stay as they were."""
    model = _seeded_model(config)
    before = copy.deepcopy(model.state_dict())
    _train(model, _optimizer(spec, model), config, steps=2, lr=0.0)
    moved = [n for n, t in model.state_dict().items() if not torch.equal(t, before[n])]
    if moved:
        raise AssertionError(f"with every param_group's lr set to 0, a step changed {', '.join(moved[:3])}")


def check_honours_weight_decay(spec, config):
    """Each group's weight_decay (train.weight_decay, on matrices and embeddings) is applied: the same
    steps with it at 0.5 and at 0 end at other weights."""
    ends = []
    for weight_decay in (0.0, 0.5):
        model = _seeded_model(config)
        flat_gradients(model)
        _train(model, build_optimizer(spec, param_groups(model, weight_decay=weight_decay), LR), config, steps=2)
        ends.append(dict(model.named_parameters()))
    decayed = {n for n, p in ends[0].items() if p.dim() >= 2}  # (as param_groups gives matrices their decay)
    if all(torch.equal(ends[0][n], ends[1][n]) for n in decayed):
        raise AssertionError("a step with weight_decay 0.5 in the param_groups gave the weights it gives with 0: "
                             "apply each group's weight_decay in step()")


def check_resumes_exactly(spec, config):
    """A fresh optimizer on a copy of the weights that loads another's state_dict takes the very step
    that one takes: what `gptkit run --resume` relies on."""
    a = _seeded_model(config)
    optimizer_a = _optimizer(spec, a)
    _train(a, optimizer_a, config, steps=3)
    b = _seeded_model(config, seed=1)
    b.load_state_dict(a.state_dict())
    optimizer_b = _optimizer(spec, b)
    found = unloadable(optimizer_a.state_dict(), "state_dict()")
    if found:
        raise AssertionError(f"state_dict() holds {found}, which a checkpoint loaded with "
                             "torch.load(weights_only=True) cannot")
    optimizer_b.load_state_dict(copy.deepcopy(optimizer_a.state_dict()))
    _train(a, optimizer_a, config, steps=1)
    _train(b, optimizer_b, config, steps=1)
    differ = [n for (n, p), q in zip(a.named_parameters(), b.parameters()) if not torch.equal(p, q)]
    if differ:
        raise AssertionError(f"after loading the state_dict, the next step gives other values of "
                             f"{', '.join(differ[:3])}")


def check_zero_grad(spec, config):
    """zero_grad(set_to_none=False), as the trainer calls it, leaves every gradient a tensor of zeros."""
    model = _seeded_model(config)
    optimizer = _optimizer(spec, model)
    model(tokens(config), tokens(config))[1].backward()
    optimizer.zero_grad(set_to_none=False)
    left = [n for n, p in model.named_parameters() if p.grad is None or p.grad.any()]
    if left:
        raise AssertionError(f"after zero_grad(set_to_none=False) the gradients of {', '.join(left[:3])} are not "
                             "zeros")


def _seeded_model(config, seed=0):
    torch.manual_seed(seed)
    return tiny_model(config)


def _optimizer(spec, model, lr=LR):
    """Built as the trainer builds it: over its parameter groups by role, the gradients in one buffer."""
    flat_gradients(model)
    return build_optimizer(spec, param_groups(model, weight_decay=0.1), lr)


def _train(model, optimizer, config, steps, lr=LR) -> list[float]:
    """Steps on one fixed batch, as the trainer takes them; the loss before each."""
    x, losses = tokens(config), []
    for _ in range(steps):
        set_lr(optimizer, lr)
        _, loss = model(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        losses.append(loss.item())
    return losses


def check_text(spec, config):
    """text() is a non-empty str, and a fresh corpus gives the same again: a data file deleted is made
    anew, and a checkpoint refuses to resume on another text."""
    text = spec.build().text()
    if not (isinstance(text, str) and text):
        raise AssertionError(f"text() returned {text!r:.40}, not a non-empty str")
    if spec.build().text() != text:
        raise AssertionError("a second call of text() gave another text")


CHECKS: dict[str, tuple[tuple[str, ...], Callable]] = {  # name: (the kinds it applies to, the check)
    "construct": (MODEL_KINDS, check_construct),
    "shape and dtype": (MODEL_KINDS, check_shape_and_dtype),
    "input unchanged": (MODEL_KINDS, check_input_unchanged),
    "finite": (MODEL_KINDS, check_finite),
    "deterministic": (MODEL_KINDS, check_deterministic),
    "backward": (MODEL_KINDS, check_backward),
    "state_dict round trip": (MODEL_KINDS, check_state_dict_round_trip),
    "causal": (MODEL_KINDS, check_causal),
    "offsets": (("positional",), check_offsets),
    "tells positions apart": (("positional",), check_tells_positions_apart),
    "fewer key heads": (("positional",), check_fewer_key_heads),
    "uses positional": (("attention",), check_uses_positional),
    "every partner": (PAIRED, check_every_partner),
    "matches naive": (PAIRED, check_matches_naive),
    "kv cache": (MODEL_KINDS, check_kv_cache),
    "factors": (("schedule",), check_factors),
    "pure function of step": (("schedule",), check_pure_function_of_step),
    "lowers the loss": (("optimizer",), check_lowers_the_loss),
    "honours lr": (("optimizer",), check_honours_lr),
    "honours weight_decay": (("optimizer",), check_honours_weight_decay),
    "resumes exactly": (("optimizer",), check_resumes_exactly),
    "zero_grad": (("optimizer",), check_zero_grad),
    "text": (("corpus",), check_text),
}


def run_check(check: str, spec: ComponentSpec, config: GPTConfig = CONFIG) -> Result:
    """One check's result; never raises for a failing check. Running out of memory is not the
    component failing but the test model too big for the machine: raised, for check_component to say."""
    kinds, fn = CHECKS[check]
    if spec.kind not in kinds:
        return Result(check, "n/a", f"only for {listing(kinds)} components")
    try:
        note = fn(spec, config)  # a passing check may say what it left out
    except NotApplicable as e:
        return Result(check, "n/a", str(e))
    except Exception as e:  # a check reports any failure of the component, whatever it raised
        if out_of_memory(e):
            raise
        return Result(check, "fail", f"{type(e).__name__}: {e}{spec.line_of(e)}{undeclared_hint(e)}")  # where it raised
    return Result(check, "pass", note or "")


# Checks that compare two passes: a component that is not deterministic, or whose output is not finite,
# would fail them, each with a misleading reason, so they are skipped once "deterministic" has found it so.
COMPARE_PASSES = ("state_dict round trip", "causal", "offsets", "every partner", "matches naive", "kv cache")


# Checks every later one builds on: once one fails, the rest would fail alike (the same constructor
# error, a dtype mismatch deep inside torch), so they are skipped, and its failure is said once.
GATES = ("construct", "shape and dtype")


def run_checks(checks: list[str], spec: ComponentSpec, config: GPTConfig = CONFIG) -> list[Result]:
    """`checks`' results in order: every one after a failed GATES check skipped, and those of COMPARE_PASSES
    when "deterministic" found the component not deterministic or its output not finite (not when it fails
    otherwise: raising, or on the meta device, which has no values)."""
    results = []
    for check in checks:
        gate = next((r.check for r in results if r.check in GATES and r.status == "fail"), None)
        why = f"{gate} failed" if gate else next(
            (w for r in results if r.check == "deterministic" for w in (NOT_DETERMINISTIC, NOT_FINITE)
             if w in r.detail and check in COMPARE_PASSES), None)
        results.append(Result(check, "n/a", f"skipped: {why}") if why else run_check(check, spec, config))
    return results


def optimizer_warnings(spec: ComponentSpec, weight_decay: float) -> list[str]:
    """For a plugin or local optimizer, the warnings a run gives before training, which trains all the
    same: one that does not resume exactly ("resumes exactly" fails: state kept outside its state_dict,
    say), and with a `weight_decay` (train.weight_decay) above 0, one that does not apply it ("honours
    weight_decay"). Checked on the CPU test model, the caller's random state left as it was."""
    if spec.kind != "optimizer" or spec.built_in:
        return []
    from .diagnose import check_command

    said = {  # check: (what the optimizer does not do, what that means)
        "resumes exactly": ("resume exactly", "a resumed run will not take the steps an uninterrupted one takes; keep "
                                              "what its steps need in state_dict() (self.state[p], the param groups)"),
        "honours weight_decay": ("honour weight_decay", f"it trains as if train.weight_decay were 0, not "
                                 f"{weight_decay:g}, and an ablation against an optimizer that applies it compares "
                                 "unequal terms; apply each param group's weight_decay in step()")}
    warnings = []
    for check, (fails, means) in said.items():
        if check == "honours weight_decay" and weight_decay == 0:
            continue
        with keep_random_state(torch.device("cpu")):  # (train builds on the CPU: see device.torch_defaults)
            result = run_check(check, spec)
        if result.status == "fail" and result.detail.startswith("AssertionError"):  # (one that raises: training says)
            warnings.append(f"train.optimizer ({spec.name}) does not {fails} ({result.detail}): {means}. "
                            f"{check_command(spec)} tests it")
    return warnings


def check_component(kind: str, name_or_spec, config: GPTConfig = CONFIG,
                    device: torch.device | str = "cpu") -> list[Result]:
    """Run every check of its kind on one component, on `device` (a component with a GPU kernel of its
    own is checked on the GPU); never raises for a failing check. Raises a UserError when it cannot be
    checked as asked: unknown or broken (RegistryError), parameters that do not validate, a size of
    `config` past a recipe's limit (SizeError), a device that is not there, a test model that does not
    fit in the device's memory; and a ValueError when the
    component, or a default of the test model, refuses `config`. The checks seed torch's global
    generator; the caller's random state is put back afterwards."""
    if not isinstance(config, GPTConfig):
        raise TypeError(f"config must be a GPTConfig, e.g. dataclasses.replace(CONFIG, n_embd=64), got "
                        f"{type(config).__name__}")
    name = name_or_spec.get("name") if isinstance(name_or_spec, dict) else name_or_spec
    if isinstance(name, str):
        registry(kind).get(name)  # unknown or broken: the registry's error, not a recipe's (parse_component's)
    try:
        spec = parse_component(kind, name_or_spec)
    except RecipeIssue as e:
        if isinstance(e, UserError):  # BrokenParams: a RegistryError that names the component already
            raise
        raise UserError(f"{kind} '{name}': {e}" if isinstance(name, str) else f"{kind}: {e}") from None
    _assert_recipe_limits(config)
    registry(kind).check(spec.name, config, spec.params)  # ValueError: the component refuses `config`
    if kind not in UNSIZED:
        _assert_defaults_usable(config, kind)
    device = _device(device)

    def too_large(e: BaseException) -> UserError:  # one error, not every check failing alike
        sizes = ", ".join(f"{key}={getattr(config, key)}" for key in ("n_embd", "n_head", "block_size", "vocab_size",
                                                                        "n_layer"))
        smaller = "smaller --n-embd/--n-head/--block-size/--vocab-size" if on_command_line() else \
            "a config with smaller n_embd, n_head, block_size or vocab_size"
        return UserError(f"the test model does not fit in memory on {out_of_memory_on(e, device)} ({sizes}); "
                         f"use {smaller}")

    # Under gptkit's defaults whatever the caller set (no_grad, autocast, a float64 default), as training
    # runs, and in full float32: the checks compare passes to rounding. device: where the checks build and draw.
    with out_of_memory_as(too_large), keep_random_state(device), torch_defaults(), fp32_matmuls(), device:
        return run_checks([check for check, (kinds, _) in CHECKS.items() if kind in kinds], spec, config)


class SizeError(UserError):
    """A size of the test model past the limit a recipe sets on it; `key` names it."""

    def __init__(self, key: str, value, reason: str):
        super().__init__(f"config.{key} {value!r}: {reason}")
        self.key, self.value, self.reason = key, value, reason


MAX_VOCAB = 0x110000  # every Unicode code point: a character-level vocabulary can hold no more


def _assert_recipe_limits(config: GPTConfig):
    """The limits ModelSection sets on a recipe's sizes, from its own fields: past them, building the
    component alone could try to allocate more memory than the machine has, before any check fails."""
    for key in CONFIG_KEYS:
        field, value = ModelSection.model_fields[key], getattr(config, key)
        try:
            TypeAdapter(Annotated[field.annotation, *field.metadata]).validate_python(value, strict=True)
        except ValidationError as e:
            raise SizeError(key, value, f"{e.errors()[0]['msg']}, as in a recipe") from None
    vocab = config.vocab_size
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 1 <= vocab <= MAX_VOCAB:  # (no recipe sets it)
        raise SizeError("vocab_size", vocab, f"must be a whole number from 1 to {MAX_VOCAB:,}, the characters a "
                                             "text can hold")


def _device(device: torch.device | str) -> torch.device:
    """`device` as `--device` takes it: a GPU that is not there is resolve_device's UserError, not
    torch's AssertionError at first use. Any other device torch names (meta: shapes without numbers)
    is taken as it is."""
    try:
        device = torch.device(device)
    except RuntimeError:  # auto, or a typo (which resolve_device's error says, listing the names)
        return resolve_device(str(device), "device")
    return resolve_device(str(device), "device") if device.type in ("cuda", "mps") else device


class DefaultRefuses(ValueError):
    """The default component the test model takes for a kind not checked refuses the test sizes: the
    sizes are at fault, not the checked component's parameters."""


def _assert_defaults_usable(config: GPTConfig, checked: str):
    """The test model takes the recipe's default for every kind it is not given. One that cannot be
    loaded (a plugin claiming its name, say), or that refuses `config`'s sizes, would fail nearly every
    check of every component, each with a validation error of the whole model: it is one error, up
    front, instead (a ValueError for sizes)."""
    for kind in MODEL_KINDS:
        name = ModelSection.model_fields[kind].default
        try:
            registry(kind).get(name)
        except RegistryError as e:
            raise RegistryError(f"the conformance test model uses the default {kind} '{name}', which is "
                                f"unusable: {e}") from None
        if kind != checked:
            try:
                registry(kind).check(name, config, parse_component(kind, name).params)
            except ValueError as e:
                raise DefaultRefuses(f"the test model's default {kind} '{name}' refuses them: {e}") from None


def assert_conformant(kind: str, name_or_spec, config: GPTConfig = CONFIG, device: torch.device | str = "cpu") -> None:
    """For a plugin's own pytest suite: fails with every failing check listed."""
    failed = [r for r in check_component(kind, name_or_spec, config, device) if r.status == "fail"]
    if failed:
        raise AssertionError("\n".join(f"{r.check}: {r.detail}" for r in failed))
