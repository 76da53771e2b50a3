"""The contract every model component must meet, as checks that run on any registered component.

gptkit's own tests run these over the whole registry; `gptkit check KIND NAME` runs them on one
component, and a plugin's test suite can call `check_component` or `assert_conformant` directly.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .components.attention import KVCache, caches
from .components.base import GPTConfig, Params
from .components.positional import Positional
from .model import build_model, state_dict_mismatch
from .recipe.components import ComponentSpec, parse_component
from .recipe.schema import ModelSection
from .registry import RegistryError, registry

MODEL_KINDS = ("attention", "feedforward", "norm", "positional")
CONFIG = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)


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
    return torch.randint(0, config.vocab_size, (batch, config.block_size), generator=torch.Generator().manual_seed(0))


def _module(spec: ComponentSpec, config: GPTConfig):
    if spec.kind == "attention":
        return spec.build(config, pos=parse_component("positional", "none").build(config))
    return spec.build(config)


def _input(config: GPTConfig) -> torch.Tensor:
    return torch.randn(3, config.block_size, config.n_embd, generator=torch.Generator().manual_seed(1))


def _apply(spec: ComponentSpec, module, x, config: GPTConfig):
    if spec.kind == "positional":  # run every hook, as a model and attention would
        q = k = x.view(*x.shape[:2], config.n_head, -1).transpose(1, 2)
        q, k = module.rotate(q, k)
        bias = module.score_bias(x.size(1), x.size(1))
        out = module.embed(x) + (q + k).transpose(1, 2).reshape(x.shape)
        return out if bias is None else out + bias.sum()
    return module(x)


# ---- the checks ------------------------------------------------------------------------------
def check_construct(spec, config):
    module = _module(spec, config)
    assert isinstance(module, torch.nn.Module), f"built a {type(module).__name__}, not a torch.nn.Module"


def check_shape_and_dtype(spec, config):
    x = _input(config)
    y = _apply(spec, _module(spec, config), x, config)
    assert y.shape == x.shape, f"output shape {tuple(y.shape)}, expected {tuple(x.shape)}"
    assert y.dtype == x.dtype, f"output dtype {y.dtype}, expected {x.dtype}"


def check_finite(spec, config):
    y = _apply(spec, _module(spec, config), _input(config) * 10, config)
    assert torch.isfinite(y).all(), "output has NaN or inf"


def check_backward(spec, config):
    model = tiny_model(config, **{spec.kind: spec})
    _, loss = model(tokens(config), tokens(config))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def check_state_dict_round_trip(spec, config):
    torch.manual_seed(0)
    a = tiny_model(config, **{spec.kind: spec}).eval()
    torch.manual_seed(1)
    b = tiny_model(config, **{spec.kind: spec}).eval()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    x = tokens(config)
    assert torch.equal(a(x)[0], b(x)[0]), "a copy loaded from state_dict computes something else"


def _assert_causal(model, config):
    """Changing the tokens from position t on, for several t, leaves every output before t as it was
    and changes every output from t on (so a model that ignores its input cannot pass). In training
    mode too (the test model has no dropout): a model that sees the future there learns to read its
    targets."""
    x = tokens(config)
    T = config.block_size
    for mode in ("eval", "train"):
        getattr(model, mode)()
        with torch.no_grad():
            before = model(x)[0]
        for t in (1, T // 2, T - 1):
            changed = x.clone()
            changed[:, t:] = (changed[:, t:] + 1) % config.vocab_size  # another token for any vocabulary of 2 or more
            with torch.no_grad():
                after = model(changed)[0]
            assert torch.allclose(before[:, :t], after[:, :t], atol=1e-6), \
                f"changing a later token changed an earlier output ({mode} mode, tokens from position {t} on changed)"
            same = [p for p in range(t, T) if torch.allclose(before[:, p], after[:, p])]
            assert not same, f"changing the tokens from position {t} on left the outputs at positions {same} " \
                f"unchanged ({mode} mode)"
    model.eval()


def _assert_cache_matches(model, config):
    """A prefix, then a few tokens at once, then one at a time through the cache: the logits of one
    forward pass over the whole sequence."""
    x = tokens(config)
    t = config.block_size // 2
    cuts = [0, t, t + 3, *range(t + 4, config.block_size + 1)]
    cache = model.new_cache()
    with torch.no_grad():
        full = model(x)[0]
        cached = torch.cat([model(x[:, a:b], cache=cache)[0] for a, b in zip(cuts, cuts[1:])], dim=1)
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-4), \
        f"cached logits differ from a full forward pass by {(cached - full).abs().max():.2e}"


def check_causal(spec, config):
    """Every kind: a norm or feedforward that pooled over time would leak the future as surely as an attention."""
    _assert_causal(tiny_model(config, **{spec.kind: spec}), config)


def check_every_partner(spec, config):
    """An attention must work with every positional scheme (its rotate and score_bias hooks), and a
    positional scheme with every attention: finite loss and gradients, causal, and the same logits
    through the key/value cache, for each pair."""
    if spec.kind not in ("attention", "positional"):
        raise NotApplicable("only attention and positional components are paired")
    other = "positional" if spec.kind == "attention" else "attention"
    failures, skipped = [], []
    for name, partner in _partners(other, config, skipped):
        try:
            model = tiny_model(config, **{spec.kind: spec, other: partner})
            _, loss = model(tokens(config), tokens(config))
            loss.backward()
            assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), \
                "non-finite loss or gradient"
            _assert_causal(model, config)
            if model.supports_kv_cache:  # a partner's rotation or bias must continue from the cache's length
                _assert_cache_matches(model, config)
        except Exception as e:  # report every failing partner, not just the first
            failures.append(f"{other} {name}: {type(e).__name__}: {e}")
    assert not failures, "; ".join(failures + skipped)
    return "; ".join(skipped)


def _partners(kind: str, config: GPTConfig, skipped: list[str] | None = None):
    """(name, spec) of every registered `kind` that can be built with the test sizes and works with
    the default partner: a plugin broken on its own is its own failure, not every other component's
    (its name and error go to `skipped`)."""
    for name in registry(kind).names():
        if registry(kind).entry(name).error:
            continue  # a broken plugin is reported on its own, not against another component
        try:
            partner = parse_component(kind, name)
            registry(kind).check(name, config, partner.params)
        except (ValueError, RegistryError):
            continue  # this pair cannot be built with the test sizes (a recipe would refuse it too), or the
            # partner's own check is broken: the partner's failure, not this component's
        try:
            model = tiny_model(config, **{kind: partner})
            model(tokens(config), tokens(config))[1].backward()
            _assert_causal(model, config)
        except Exception as e:
            if skipped is not None:
                skipped.append(f"{kind} {name} skipped: broken on its own ({type(e).__name__}: {e})")
            continue
        yield name, partner


def check_matches_naive(spec, config):
    """Same weights and inputs as the reference `naive` attention: the same outputs and gradients. An
    attention with every positional scheme (it must apply their rotations and biases), a positional
    scheme under `flash`."""
    if spec.kind not in ("attention", "positional"):
        raise NotApplicable("only attention and positional components")
    if spec.kind == "attention" and spec.name == "naive":
        raise NotApplicable("naive is the reference attention")
    if spec.kind == "positional":
        _assert_matches_naive("flash", spec, config)
        return
    for name, positional in _partners("positional", config):
        _assert_matches_naive(spec, positional, config, f"with positional {name}: ")


def _assert_matches_naive(attention, positional, config, label=""):
    models = []
    for a in ("naive", attention):
        torch.manual_seed(0)
        models.append(tiny_model(config, attention=a, positional=positional))
    reference, model = models
    try:  # parameters of its own (a learned temperature, say) keep their initial values
        unexpected = model.load_state_dict(reference.state_dict(), strict=False).unexpected_keys
    except RuntimeError as e:
        unexpected = [state_dict_mismatch(e)]
    if unexpected:
        raise NotApplicable(f"weights are not interchangeable with naive attention's: {unexpected[0]}")
    x = tokens(config)
    (out_ref, loss_ref), (out, loss) = reference(x, x), model(x, x)
    loss_ref.backward()
    loss.backward()
    assert torch.allclose(out, out_ref, atol=1e-5, rtol=1e-4), \
        f"{label}outputs differ from naive attention by {(out - out_ref).abs().max():.2e}"
    grads_ref = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        if name not in grads_ref:  # its own parameter: nothing to compare with
            continue
        diff = (p.grad - grads_ref[name].grad).abs().max()
        assert torch.allclose(p.grad, grads_ref[name].grad, atol=1e-5, rtol=1e-4), \
            f"{label}gradient of {name} differs from naive attention by {diff:.2e}"


def check_offsets(spec, config):
    """A positional scheme's hooks asked for positions s.. (what a key/value cache continues from)
    give the tail of what they give for positions 0..; with every parameter and buffer randomised,
    as tables that start at zero hide an ignored offset."""
    if spec.kind != "positional":
        raise NotApplicable("only positional components take a start offset")
    pos = _randomised(_module(spec, config))
    T, s, g = config.block_size, config.block_size // 2 + 1, torch.Generator().manual_seed(2)
    x = torch.randn(2, T, config.n_embd, generator=g)
    q, k = (torch.randn(2, config.n_head, T, config.head_dim, generator=g) for _ in range(2))
    with torch.no_grad():
        _assert_same(pos.embed(x[:, s:], s), pos.embed(x)[:, s:], f"embed(x[:, {s}:], start={s})")
        (q_s, k_s), (q_0, k_0) = pos.rotate(q[:, :, s:], k[:, :, s:], s), pos.rotate(q, k)
        _assert_same(q_s, q_0[:, :, s:], f"rotate(..., start={s}) of q")
        _assert_same(k_s, k_0[:, :, s:], f"rotate(..., start={s}) of k")
        tail, whole = pos.score_bias(T - s, T), pos.score_bias(T, T)
        assert (tail is None) == (whole is None), "score_bias is None for some shapes only"
        if whole is not None:
            _assert_same(tail, whole[..., s:, :], f"score_bias({T - s}, {T})")


def _assert_same(part, whole, what):
    assert part.shape == whole.shape and torch.allclose(part, whole, atol=1e-6), \
        f"{what} is not the matching part of the whole sequence's (off by {(part - whole).abs().max():.2e})" \
        if part.shape == whole.shape else f"{what} has shape {tuple(part.shape)}, expected {tuple(whole.shape)}"


def _randomised(module):
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=torch.Generator().manual_seed(t.numel())) * 0.5)
    return module


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
    if spec.kind != "attention":
        raise NotApplicable("only attention uses the positional hooks")
    T, t = config.block_size, config.block_size // 2
    attn = spec.build(config, pos=_Spy(config)).eval()
    x = torch.randn(2, T, config.n_embd, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        attn(x)
        expected = [("rotate", T, 0), ("score_bias", T, T)]
        if caches(attn):
            cache = KVCache()
            attn(x[:, :t], cache)
            attn(x[:, t:], cache)
            expected += [("rotate", t, 0), ("score_bias", t, t), ("rotate", T - t, t), ("score_bias", T - t, T)]
    assert attn.pos.calls == expected, f"expected the calls {expected}, got {attn.pos.calls}"


def check_kv_cache(spec, config):
    """Feeding a prefix, then a few tokens at once, then one at a time through a key/value cache,
    gives the logits of one forward pass over the whole sequence."""
    if spec.kind not in ("attention", "positional"):
        raise NotApplicable("only attention and positional components see the cache")
    model = tiny_model(config, **{spec.kind: spec}).eval()
    if not model.supports_kv_cache:
        raise NotApplicable("the attention does not support a key/value cache; generation recomputes")
    _assert_cache_matches(model, config)


CHECKS: dict[str, Callable] = {
    "construct": check_construct,
    "shape and dtype": check_shape_and_dtype,
    "finite": check_finite,
    "backward": check_backward,
    "state_dict round trip": check_state_dict_round_trip,
    "causal": check_causal,
    "offsets": check_offsets,
    "uses positional": check_uses_positional,
    "every partner": check_every_partner,
    "matches naive": check_matches_naive,
    "kv cache": check_kv_cache,
}


def check_component(kind: str, name_or_spec, config: GPTConfig = CONFIG) -> list[Result]:
    """Run every check on one component; never raises for a failing check."""
    spec = parse_component(kind, name_or_spec)
    registry(kind).check(spec.name, config, spec.params)  # ValueError: the component refuses `config`
    results = []
    for check, fn in CHECKS.items():
        try:
            note = fn(spec, config)  # a passing check may say what it left out
        except NotApplicable as e:
            results.append(Result(check, "n/a", str(e)))
        except Exception as e:  # a check reports any failure of the component, whatever it raised
            results.append(Result(check, "fail", f"{type(e).__name__}: {e}"))
        else:
            results.append(Result(check, "pass", note or ""))
    return results


def assert_conformant(kind: str, name_or_spec, config: GPTConfig = CONFIG) -> None:
    """For a plugin's own pytest suite: fails with every failing check listed."""
    failed = [r for r in check_component(kind, name_or_spec, config) if r.status == "fail"]
    assert not failed, "\n".join(f"{r.check}: {r.detail}" for r in failed)
