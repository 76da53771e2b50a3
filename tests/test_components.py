"""Every registered component of every kind against the contract (which pairs every attention with
every positional scheme), and the contract against subtly broken model components (the other kinds'
are in test_conformance_kinds.py).

Parametrized over the registry: a newly registered component is tested with no new test code.
"""

import re

import pytest
import torch

from gptkit.components.base import GPTConfig
from gptkit.conformance import CHECKS, CONFIG, assert_conformant, check_component, run_check, tiny_model, tokens
from gptkit.errors import UserError
from gptkit.recipe.components import parse_component
from gptkit.registry import RegistryError, kinds, registry

COMPONENTS = [(kind, name) for kind in kinds() for name in registry(kind).names()]


@pytest.fixture
def one_play(monkeypatch):
    """The shakespeare corpus of its first play only: all of them, built twice, take seconds."""
    from gptkit.data import shakespeare

    every = shakespeare.play_files
    monkeypatch.setattr(shakespeare, "play_files", lambda root: every(root)[:1])


@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_component_conformance(kind, name, one_play):
    """Every check of its kind ran and passed; n/a only where the check says why it does not apply."""
    results = check_component(kind, name)
    assert [r.check for r in results] == [c for c, (kinds, _) in CHECKS.items() if kind in kinds]
    failed = [f"{r.check}: {r.status}: {r.detail}" for r in results if r.status not in ("pass", "n/a")]
    assert not failed, failed
    not_applicable = {r.check: r.detail for r in results if r.status == "n/a"}
    allowed = {"matches naive"} | ({"tells positions apart"} if (kind, name) == ("positional", "none") else set())
    assert set(not_applicable) <= allowed and all(not_applicable.values()), not_applicable


def test_conformance_uses_the_config_it_is_given(temporary_component):
    from gptkit.components import GPTConfig
    from gptkit.components.norm import RMSNorm

    built = []

    class Recording(RMSNorm):  # refuses the default CONFIG, and records every config it is built with
        @classmethod
        def check(cls, config, params):
            if config.head_dim == CONFIG.head_dim:
                raise ValueError(f"head_dim {config.head_dim} refused")

        def __init__(self, config, params):
            super().__init__(config, params)
            built.append(config)

    temporary_component("norm", "recording", Recording)
    config = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=32)  # head_dim 16, not 8
    with pytest.raises(ValueError, match="head_dim 8 refused"):
        check_component("norm", "recording")
    failed = [f"{r.check}: {r.detail}" for r in check_component("norm", "recording", config) if r.status == "fail"]
    assert not failed, failed
    assert built and all(c == config for c in built)


def test_a_failing_component_is_reported_not_raised(temporary_component):
    from gptkit.components.feedforward import MLP

    class Leaky(MLP):
        def forward(self, x):
            return super().forward(x) + x.cumsum(1) * float("nan")

    temporary_component("feedforward", "leaky", Leaky)
    results = {r.check: r for r in check_component("feedforward", "leaky")}
    assert results["construct"].status == "pass"
    assert results["finite"].status == "fail"
    assert results["backward"].status == "fail"


def broken_components():
    """Subtly wrong components, each of which the contract must catch (kind, class, the checks that fail)."""
    import torch.nn.functional as F

    from gptkit.components.attention import FlashAttention
    from gptkit.components.feedforward import MLP
    from gptkit.components.norm import RMSNorm
    from gptkit.components.positional import Learned, Positional, RoPE

    class PoolsOverTime(RMSNorm):  # statistics over time as well as channels
        def forward(self, x):
            return x * torch.rsqrt(x.pow(2).mean((-2, -1), keepdim=True) + 1e-5) * self.weight

    class SeesTheFuture(MLP):
        def forward(self, x):
            return super().forward(x + 0.1 * x.flip(1).cumsum(1).flip(1))

    class PeeksOneAhead(MLP):  # only the first position reads the second: a single cut at T/2 misses it
        def forward(self, x):
            leak = torch.zeros_like(x)
            leak[:, 0] = x[:, 1]
            return super().forward(x + leak)

    class IgnoresItsInput(RMSNorm):  # the same output for every input, with (zero) gradients for all
        def forward(self, x):
            return self.weight * (1 + 0 * x)

    class LeaksWhenTraining(FlashAttention):
        def attend(self, q, k, v, bias):
            return F.scaled_dot_product_attention(q, k, v) if self.training else super().attend(q, k, v, bias)

    class IgnoresBias(FlashAttention):
        def attend(self, q, k, v, bias):
            return super().attend(q, k, v, None)

    class ForgetsStart(FlashAttention):  # rotates cached queries and keys as if they came first
        def forward(self, x, cache=None):
            rotate = self.pos.rotate
            self.pos.rotate = lambda q, k, start=0: rotate(q, k)
            try:
                return super().forward(x, cache)
            finally:
                del self.pos.rotate

    class MasksTopLeft(FlashAttention):  # right for a whole sequence, wrong for a chunk after a cache
        def attend(self, q, k, v, bias):
            if bias is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=q.size(-2) > 1)
            return super().attend(q, k, v, bias)

    class IgnoresPositional(FlashAttention):  # never asks its partner: no positions at all
        def forward(self, x, cache=None):
            B, T, C = x.size()
            q, k, v = (t.transpose(1, 2) for t in self.c_attn(x).view(B, T, 3, self.n_head, -1).unbind(2))
            if cache is not None:
                k, v = cache.extend(k, v)
            return self.c_proj(self.attend(q, k, v, None).transpose(1, 2).reshape(B, T, C))

    class SquareBiasTable(Positional):  # learned bias rows for queries 0.. even when they come last
        def __init__(self, config, params):
            super().__init__(config, params)
            self.table = torch.nn.Parameter(torch.zeros(config.n_head, config.block_size, config.block_size))

        def score_bias(self, t_q, t_k):  # zero at init: every check but the randomised one is blind to it
            return self.table[:, :t_q, :t_k]

    class AddsNothing(Learned):  # its table, scaled to nothing: `none` in disguise
        def embed(self, x, start=0):
            return x + 0 * super().embed(x, start)

    class SameRotation(RoPE):  # every position rotated by the first one's angles
        def rotate(self, q, k, start=0):
            cos, sin = self.cos[:1], self.sin[:1]
            return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    class LeaksBehindAZeroProjection(MLP):  # the next token, through a projection that starts at zero
        def __init__(self, config, params):
            super().__init__(config, params)
            self.leak = torch.nn.Linear(config.n_embd, config.n_embd, bias=False)

        def init_weights(self):
            self.leak.weight.zero_()

        def forward(self, x):
            return super().forward(x) + self.leak(x.roll(-1, 1))

    class ForgetsItsSavedGain(RMSNorm):  # loads nothing: its gain starts at one, as the saved one did
        def _load_from_state_dict(self, *args):
            pass

    class KeepsStateOutOfItsStateDict(RMSNorm):  # what training sets, in a buffer no checkpoint holds
        def __init__(self, config, params):
            super().__init__(config, params)
            self.register_buffer("scale", torch.ones(()), persistent=False)

        def forward(self, x):
            if self.training:
                self.scale.fill_(2.0)
            return super().forward(x) * self.scale

    class ChangesItsInput(RMSNorm):  # scales the residual stream, to which the norm itself is blind
        def forward(self, x):
            return super().forward(x.mul_(2))

    class ReturnsItsTable(Learned):  # the positions' embeddings alone, (T, C), which broadcasts
        def embed(self, x, start=0):
            return self.wpe(torch.arange(start, start + x.size(1), device=x.device))

    class ScalesItsPositionalsTable(FlashAttention):  # shared state: passes alone, beside a `none` positional
        def attend(self, q, k, v, bias):
            for t in self.pos.buffers():
                t.mul_(1.01)
            return super().attend(q, k, v, bias)

    class CountsItsTrainingPasses(FlashAttention):  # a counter that scales q in training mode only
        def __init__(self, config, params, pos):
            super().__init__(config, params, pos)
            self.register_buffer("n", torch.zeros(()))

        def attend(self, q, k, v, bias):
            if self.training:
                self.n += 1
            return super().attend(q * (1 + self.n), k, v, bias)

    return [
        ("attention", ScalesItsPositionalsTable, {"deterministic"}),
        ("attention", CountsItsTrainingPasses, {"causal", "every partner", "matches naive"}),
        ("positional", ReturnsItsTable, {"shape and dtype"}),
        ("feedforward", LeaksBehindAZeroProjection, {"causal", "kv cache"}),
        ("norm", ForgetsItsSavedGain, {"state_dict round trip"}),
        ("norm", KeepsStateOutOfItsStateDict, {"state_dict round trip"}),
        ("norm", ChangesItsInput, {"input unchanged"}),
        ("positional", AddsNothing, {"tells positions apart"}),
        ("positional", SameRotation, {"tells positions apart"}),
        ("norm", PoolsOverTime, {"causal", "kv cache"}),  # a cached step sees no future to pool
        ("feedforward", SeesTheFuture, {"causal", "kv cache"}),
        ("feedforward", PeeksOneAhead, {"causal", "kv cache"}),
        ("norm", IgnoresItsInput, {"causal"}),
        ("attention", LeaksWhenTraining, {"causal", "every partner", "matches naive"}),
        ("attention", IgnoresBias, {"matches naive"}),
        ("attention", ForgetsStart, {"every partner", "uses positional"}),
        ("attention", MasksTopLeft, {"kv cache", "every partner"}),
        ("attention", IgnoresPositional, {"uses positional", "matches naive"}),
        ("positional", SquareBiasTable, {"offsets", "kv cache", "every partner"}),  # hidden by a zero table at init
    ]


def test_an_attention_with_a_parameter_of_its_own_is_still_compared_with_naive(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Tempered(FlashAttention):  # a learned temperature, 1 at init: naive attention's maths
        def __init__(self, config, params, pos):
            super().__init__(config, params, pos)
            self.log_scale = torch.nn.Parameter(torch.zeros(1))

        def attend(self, q, k, v, bias):
            return super().attend(q * self.log_scale.exp(), k, v, bias)

    temporary_component("attention", "tempered", Tempered)
    results = {r.check: r for r in check_component("attention", "tempered")}
    assert results["matches naive"].status == "pass", results["matches naive"]
    assert all(r.status != "fail" for r in results.values()), [(r.check, r.detail) for r in results.values()]


def test_an_attention_asking_its_positional_in_another_order_passes(temporary_component):
    from gptkit.components.attention import FlashAttention

    class BiasFirst(FlashAttention):  # asks score_bias before rotate: the same attention
        def forward(self, x, cache=None):
            B, T, C = x.size()
            start = len(cache) if cache is not None else 0
            bias = self.pos.score_bias(T, start + T)
            q, k, v = (t.transpose(1, 2) for t in self.c_attn(x).view(B, T, 3, self.n_head, -1).unbind(2))
            q, k = self.pos.rotate(q, k, start)
            if cache is not None:
                k, v = cache.extend(k, v)
            return self.c_proj(self.attend(q, k, v, bias).transpose(1, 2).reshape(B, T, C))

    temporary_component("attention", "bias-first", BiasFirst)
    results = check_component("attention", "bias-first")
    assert all(r.status != "fail" for r in results), [(r.check, r.detail) for r in results if r.status == "fail"]


def test_naive_attention_is_not_compared_with_itself():
    from gptkit.conformance import NotApplicable, check_matches_naive

    with pytest.raises(NotApplicable, match="naive is the reference attention"):
        check_matches_naive(parse_component("attention", "naive"), CONFIG)


def test_attend_must_return_the_shape_of_q(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Transposed(FlashAttention):
        def attend(self, q, k, v, bias):
            return super().attend(q, k, v, bias).transpose(1, 2)  # (B, T, nh, hs)

    temporary_component("attention", "transposed", Transposed)
    with pytest.raises(RuntimeError, match=r"Transposed.attend returned shape \(3, 16, 4, 8\); it must return"):
        tiny_model(attention="transposed")(tokens(CONFIG))


@pytest.mark.parametrize("kind,cls,failing", broken_components(), ids=lambda v: getattr(v, "__name__", None))
def test_the_contract_catches_subtly_broken_components(temporary_component, kind, cls, failing):
    temporary_component(kind, "broken", cls)
    results = check_component(kind, "broken")
    assert {r.check for r in results if r.status == "fail"} == failing, [(r.check, r.detail) for r in results]


def test_a_positional_written_with_the_documented_signatures_conforms(temporary_component):
    """embed(x, start) and rotate(q, k, start) as README gives them, start without a default: every
    caller passes start, as the model does."""
    from gptkit.components.positional import RoPE, Sinusoidal

    class Rotates(RoPE):
        def rotate(self, q, k, start):
            return super().rotate(q, k, start)

    class Embeds(Sinusoidal):
        def embed(self, x, start):
            return super().embed(x, start)

    for name, cls in (("rotates", Rotates), ("embeds", Embeds)):
        temporary_component("positional", name, cls)
        failed = [(r.check, r.detail) for r in check_component("positional", name) if r.status == "fail"]
        assert not failed, (name, failed)


def test_a_component_that_changes_state_between_passes_is_not_called_acausal(temporary_component):
    counts = dict(broken_components_by_name())["CountsItsTrainingPasses"]
    temporary_component("attention", "counts", counts)
    results = {r.check: r for r in check_component("attention", "counts")}
    assert results["causal"].detail.startswith("AssertionError: two passes over the same tokens in train mode differ "
                                               "by "), results["causal"]
    assert "a forward pass changes state its next one reads" in results["causal"].detail
    scales = dict(broken_components_by_name())["ScalesItsPositionalsTable"]
    temporary_component("attention", "scales", scales)
    results = {r.check: r for r in check_component("attention", "scales")}
    assert results["deterministic"].detail == (
        "AssertionError: not deterministic in eval mode: an evaluation-mode pass of the test model changed "
        "transformer.pos.pe; a forward must not write to parameters or buffers, its own or another component's "
        "(state a training step changes may change in training mode)")
    assert all(results[c].detail == "skipped: not deterministic in eval mode" for c in ("causal", "kv cache"))


def test_a_component_setting_its_own_params_is_told_to_keep_state_on_itself(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Toggles(FlashAttention):
        def attend(self, q, k, v, bias):
            self.params.bias = not self.params.bias
            return super().attend(q, k, v, bias)

    temporary_component("attention", "toggles", Toggles)
    results = {r.check: r for r in check_component("attention", "toggles")}
    assert results["shape and dtype"].detail.startswith(
        "TypeError: cannot set self.params.bias = True in Toggles: a component's parameters are fixed once validated "
        "(the run's recipe.yaml holds them); keep what changes as the module's own state (self.bias_now = ..., a "
        "buffer if a checkpoint must hold it)"), results["shape and dtype"].detail


def test_a_component_reading_an_undeclared_parameter_is_told_how_to_declare_it(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Windowed(FlashAttention):
        def attend(self, q, k, v, bias):
            return super().attend(q, k, v, bias) if self.params.window else None

    temporary_component("attention", "windowed", Windowed)
    detail = next(r.detail for r in check_component("attention", "windowed") if r.status == "fail")
    assert detail.startswith("AttributeError: 'AttentionParams' object has no attribute 'window'") and detail.endswith(
        "; a component reads only the parameters its Params declare: subclass AttentionParams with a field `window` "
        "(and a default), and set `Params = ` that class on the component"), detail


def test_a_table_filled_on_first_use_is_deterministic_and_a_small_leak_is_not_causal(temporary_component):
    """A cache written once, on the first pass, is no state a forward changes; a leak of 1e-5 of the sequence's
    mean is a leak (training grows it), not rounding."""
    from gptkit.components.feedforward import MLP
    from gptkit.components.positional import RoPE

    class FillsOnFirstUse(RoPE):
        def __init__(self, config, params):
            super().__init__(config, params)
            self.full = (self.cos.clone(), self.sin.clone())
            self.cos.zero_(), self.sin.zero_()
            self.register_buffer("filled", torch.zeros((), dtype=torch.bool), persistent=False)

        def rotate(self, q, k, start=0):
            if not self.filled:
                self.cos.copy_(self.full[0]), self.sin.copy_(self.full[1]), self.filled.fill_(True)
            return super().rotate(q, k, start)

    class LeaksALittle(MLP):
        def forward(self, x):
            return super().forward(x) + 1e-5 * x.mean(dim=1, keepdim=True)

    temporary_component("positional", "fills", FillsOnFirstUse)
    results = {r.check: r for r in check_component("positional", "fills")}
    assert results["deterministic"].status == "pass", results["deterministic"]
    temporary_component("feedforward", "leaks", LeaksALittle)
    results = {r.check: r for r in check_component("feedforward", "leaks")}
    assert results["causal"].status == "fail" and "changed an earlier output" in results["causal"].detail


def broken_components_by_name():
    return [(cls.__name__, cls) for _, cls, _ in broken_components()]


def test_correct_positionals_of_other_rounding_or_broadcast_biases_conform(temporary_component):
    """Angles computed on the fly from the start round otherwise at a long block than a table's (some 1e-4
    of q at 512 positions), and a bias of (n_head, 1, t_k) serves every query, as attention adds it."""
    import dataclasses

    from gptkit.components.positional import ALiBi, RoPE

    class RoPEOnTheFly(RoPE):
        def rotate(self, q, k, start=0):
            hs, t = q.size(-1), q.size(-2)
            inv_freq = self.params.base ** (-torch.arange(0, hs, 2, dtype=torch.float32, device=q.device) / hs)
            angles = start * inv_freq + torch.arange(t, dtype=torch.float32, device=q.device)[:, None] * inv_freq
            cos = torch.cat((angles.cos(), angles.cos()), -1)
            sin = torch.cat((-angles.sin(), angles.sin()), -1)
            return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    class KeyBias(ALiBi):  # a learned-style bias of each key alone: no query axis to spell out
        def score_bias(self, t_q, t_k):
            return -self.slopes[:, None, None] * torch.arange(t_k, 0, -1, device=self.slopes.device)[None, None, :]

    long = dataclasses.replace(CONFIG, block_size=512, n_layer=1)
    for name, cls, config in (("on-the-fly", RoPEOnTheFly, long), ("key-bias", KeyBias, CONFIG)):
        temporary_component("positional", name, cls)
        assert run_check("offsets", parse_component("positional", name), config).status == "pass", name
    temporary_component("positional", "from-zero", type("FromZero", (RoPE,), {  # still strict: an ignored start fails
        "rotate": lambda self, q, k, start=0: RoPE.rotate(self, q, k, 0)}))
    ignored = run_check("offsets", parse_component("positional", "from-zero"), CONFIG)
    assert ignored.status == "fail" and "rotate(..., start=9) of q" in ignored.detail


def test_the_fewer_key_heads_check_fits_a_small_block():
    assert run_check("fewer key heads", parse_component("positional", "rope"),
                     GPTConfig(vocab_size=CONFIG.vocab_size, n_embd=32, n_head=4, block_size=4)).status == "pass"


def test_a_positional_must_rotate_keys_of_fewer_heads_than_queries(temporary_component):
    """Grouped-query attention hands rotate fewer key heads: keys broadcast to every head pass every other
    check, and fill the cache as many times over."""
    from gptkit.components.positional import RoPE

    class Broadcasts(RoPE):
        def rotate(self, q, k, start=0):
            return super().rotate(q, k.expand_as(q), start)

    temporary_component("positional", "broadcasts", Broadcasts)
    result = run_check("fewer key heads", parse_component("positional", "broadcasts"))
    assert result.status == "fail" and "rotate(q, k) with k of 1 head and q of 4, as multi-query attention hands " \
        "them, returned shapes (2, 4, 5, 8) and (2, 4, 5, 8); it must return each in its own shape" in result.detail, \
        result


class Noisy:
    """Adds noise in eval mode too: each pass differs, so every check comparing two passes would fail."""

    @staticmethod
    def feedforward():
        from gptkit.components.feedforward import MLP

        class NoisyMLP(MLP):
            def forward(self, x):
                return super().forward(x) + 0.1 * torch.randn_like(x)

        return NoisyMLP

    @staticmethod
    def positional():
        from gptkit.components.positional import ALiBi

        class NoisyBias(ALiBi):
            def score_bias(self, t_q, t_k):
                return super().score_bias(t_q, t_k) + torch.randn(t_q, t_k)

        return NoisyBias


@pytest.mark.parametrize("kind", ["feedforward", "positional"])
def test_a_component_that_is_not_deterministic_fails_that_check_alone(temporary_component, kind):
    temporary_component(kind, "noisy", getattr(Noisy, kind)())
    results = {r.check: r for r in check_component(kind, "noisy")}
    assert [c for c, r in results.items() if r.status == "fail"] == ["deterministic"], results
    assert results["deterministic"].detail.startswith("AssertionError: not deterministic in eval mode: two passes "
                                                      "over the same input differ by ")
    for check in ("state_dict round trip", "causal"):  # which noise alone would fail, saying something else
        assert (results[check].status, results[check].detail) == ("n/a", "skipped: not deterministic in eval mode")


def test_a_component_whose_output_is_not_finite_is_not_also_called_acausal(temporary_component):
    """NaN equals nothing: the checks comparing two passes would blame causality or the state dict."""
    from gptkit.components.feedforward import MLP

    class NaNs(MLP):
        def forward(self, x):
            return super().forward(x) * float("nan")

    temporary_component("feedforward", "nans", NaNs)
    results = {r.check: r for r in check_component("feedforward", "nans")}
    for check in ("finite", "deterministic"):
        assert (results[check].status, results[check].detail) == ("fail", "AssertionError: output has NaN or inf")
    for check in ("state_dict round trip", "causal"):
        assert (results[check].status, results[check].detail) == ("n/a", "skipped: output has NaN or inf")
    # not "transformer.wte.weight has a non-finite gradient": the embedding is innocent
    assert results["backward"].detail == "AssertionError: the loss of a forward pass is nan: no gradient can be finite"


def test_a_frozen_parameter_passes_the_backward_check(temporary_component):
    """A parameter with requires_grad=False gets no gradient by design; training leaves it alone too."""
    from gptkit.components.norm import RMSNorm

    class FrozenGain(RMSNorm):
        def __init__(self, config, params):
            super().__init__(config, params)
            self.weight.requires_grad_(False)

    temporary_component("norm", "frozen", FrozenGain)
    failed = [f"{r.check}: {r.detail}" for r in check_component("norm", "frozen") if r.status == "fail"]
    assert failed == []


def test_a_partner_that_is_not_deterministic_is_skipped_as_such(temporary_component):
    temporary_component("positional", "noisy", Noisy.positional())
    result = run_check("every partner", parse_component("attention", "flash"))
    assert result.status == "pass" and "positional noisy skipped: broken on its own (deterministic: " in result.detail


@pytest.mark.parametrize("n_embd", [128, 256, 768])
def test_swiglu_and_mlp_have_comparable_parameter_counts(n_embd):
    from gptkit.components import GPTConfig

    config = GPTConfig(vocab_size=10, n_embd=n_embd)
    counts = {name: sum(p.numel() for p in parse_component("feedforward", name).build(config).parameters())
              for name in ("mlp", "swiglu")}
    assert abs(counts["swiglu"] - counts["mlp"]) / counts["mlp"] < 0.02


def test_alibi_slopes_follow_the_paper():
    from gptkit.components.positional import ALiBi

    assert ALiBi.head_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    # Not a power of two: the 4 heads' slopes 2^-2, 2^-4, ..., then every other one of 8 heads' 2^-1, 2^-3, ...
    assert ALiBi.head_slopes(6).tolist() == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])


def test_rope_rotates_channel_pairs_so_scores_depend_on_offset_only():
    from gptkit.components.positional import RoPE

    rope = parse_component("positional", "rope").build(CONFIG)
    assert isinstance(rope, RoPE)
    hs = CONFIG.head_dim
    torch.manual_seed(0)
    q, k = torch.randn(2, 1, 1, 1, hs).unbind()  # one head, one position each
    t = CONFIG.block_size

    def at(x, pos):  # x placed at position `pos`, rotated
        return rope.rotate(x, x, start=pos)[0]

    # channel i and i + hs/2 turn by angle pos * base^(-2i/hs)
    x1, x2 = q[..., : hs // 2], q[..., hs // 2 :]
    angle = 5 * rope.params.base ** (-torch.arange(0, hs, 2) / hs)
    expected = torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)
    torch.testing.assert_close(at(q, 5), expected)
    scores = [(at(q, i + 3) * at(k, i)).sum().item() for i in range(t - 3)]  # always 3 apart
    assert scores == pytest.approx([scores[0]] * len(scores), rel=1e-4, abs=1e-5)
    assert (at(q, 3) * at(k, 0)).sum().item() != pytest.approx((at(q, 4) * at(k, 0)).sum().item())


def test_rope_rotates_keys_as_it_rotates_queries_so_every_score_depends_on_offset_only():
    rope = parse_component("positional", "rope").build(CONFIG)
    hs, t = CONFIG.head_dim, CONFIG.block_size
    torch.manual_seed(0)
    q, k = torch.randn(2, hs).unbind()
    q_rot, k_rot = (x[0, 0] for x in rope.rotate(q.expand(1, 1, t, hs), k.expand(1, 1, t, hs)))  # at every position

    # position p turns channels i and i + hs/2 together by p * base^(-2i/hs)
    angle = torch.arange(t)[:, None] * rope.params.base ** (-torch.arange(0, hs, 2) / hs)  # (t, hs/2)

    def rotated(x):
        x1, x2 = x[: hs // 2], x[hs // 2 :]
        return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), dim=-1)

    torch.testing.assert_close(q_rot, rotated(q))
    torch.testing.assert_close(k_rot, rotated(k))
    scores = q_rot @ k_rot.T  # (t, t): query i against key j
    for offset in range(t):
        diagonal = scores.diagonal(-offset)  # every (i, i - offset)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n_head", [4, 8])
def test_alibi_penalises_each_head_by_its_slope_times_the_distance_back(n_head):
    from gptkit.components import GPTConfig

    t = 6
    alibi = parse_component("positional", "alibi").build(GPTConfig(vocab_size=10, n_head=n_head, n_embd=32))
    bias = alibi.score_bias(t, t)
    assert bias.shape == (n_head, t, t)
    for h in range(n_head):
        slope = 2 ** (-8 / n_head * (h + 1))
        for i in range(t):
            for j in range(i + 1):
                assert bias[h, i, j].item() == pytest.approx(-slope * (i - j))
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)
    torch.testing.assert_close(alibi.score_bias(2, t), bias[:, -2:])  # queries continuing a cache are the last ones


def test_rmsnorm_scales_by_the_root_mean_square_without_centring():
    from gptkit.components import GPTConfig

    norm = parse_component("norm", {"name": "rmsnorm", "eps": 1e-5}).build(GPTConfig(vocab_size=10, n_embd=32))
    torch.manual_seed(0)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(2, 3, 32) + 3  # far from zero mean: centring would show
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_swiglu_gates_the_value_with_silu_of_the_gate():
    from gptkit.components import GPTConfig

    ff = parse_component("feedforward", "swiglu").build(GPTConfig(vocab_size=10, n_embd=32))
    hidden = ff.c_proj.in_features
    w_gate, w_value = ff.c_fc.weight[:hidden], ff.c_fc.weight[hidden:]  # one matmul: gate rows, then value rows
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32)
    gate = x @ w_gate.T
    expected = (gate * torch.sigmoid(gate) * (x @ w_value.T)) @ ff.c_proj.weight.T  # silu(g) = g * sigmoid(g)
    torch.testing.assert_close(ff(x), expected)


@pytest.mark.parametrize("n_embd, multiple_of, hidden", [
    (128, 8, 344),  # 8/3 * 128 = 341.3, up to 344
    (100, 8, 272),  # 266.7, up to 272
    (128, 64, 384),  # up to a multiple of 64
    (96, 8, 256),  # exactly 256 already
])
def test_swiglu_hidden_width_is_8_thirds_of_n_embd_rounded_up(n_embd, multiple_of, hidden):
    from gptkit.components import GPTConfig

    spec = parse_component("feedforward", {"name": "swiglu", "multiple_of": multiple_of})
    ff = spec.build(GPTConfig(vocab_size=10, n_embd=n_embd))
    assert ff.c_proj.in_features == hidden and ff.c_fc.out_features == 2 * hidden


def test_assert_conformant_names_a_mistyped_parameter():
    with pytest.raises(UserError, match=r"^norm 'rmsnorm': eps_: unknown key \(did you mean 'eps'\?\)"):
        assert_conformant("norm", {"name": "rmsnorm", "eps_": 1e-5})


def test_a_partner_broken_on_its_own_is_skipped_not_blamed(temporary_component):
    from gptkit.components.positional import Positional

    class Exploding(Positional):
        def embed(self, x, start=0):
            raise RuntimeError("boom")  # raised here

    temporary_component("positional", "exploding", Exploding)
    results = {r.check: r for r in check_component("attention", "flash")}
    assert results["every partner"].status == "pass", results["every partner"]
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if text.endswith("# raised here"))
    skipped = f"positional exploding skipped: broken on its own (backward: RuntimeError: boom (at {__file__}:{line}))"
    assert skipped in results["every partner"].detail
    assert results["matches naive"].status == "pass"


def test_a_partner_is_screened_with_its_own_checks_not_only_backward_and_causality(temporary_component):
    from gptkit.components.positional import Sinusoidal

    class IgnoresStart(Sinusoidal):  # right for a whole sequence; a cache's new tokens get positions from 0
        def embed(self, x, start=0):
            return super().embed(x)

    temporary_component("positional", "ignores_start", IgnoresStart)
    for check in ("every partner", "matches naive"):
        result = run_check(check, parse_component("attention", "flash"))
        assert result.status == "pass", result
        assert "positional ignores_start skipped: broken on its own (offsets: AssertionError: embed(x[:, 9:], " \
               "start=9) is not the matching part" in result.detail


def test_an_attention_partner_that_loses_the_caches_offset_is_skipped_not_blamed_on_every_positional(
        temporary_component):
    from gptkit.components.attention import FlashAttention

    class ForgetsStart(FlashAttention):  # a whole forward that rotates a cache's new tokens from position 0
        def forward(self, x, cache=None):
            q, k, v = self.project(x)
            q, k = self.pos.rotate(q, k)
            if cache is not None:
                k, v = cache.extend(k, v)
            y = self.attend(q, k, v, self.pos.score_bias(q.size(-2), k.size(-2)))
            return self.c_proj(y.transpose(1, 2).flatten(2))

    temporary_component("attention", "forgets_start", ForgetsStart)
    result = run_check("every partner", parse_component("positional", "rope"))
    assert result.status == "pass", result
    assert "attention forgets_start skipped: broken on its own (uses positional: AssertionError: expected the calls" \
        in result.detail


class SlidingWindow:
    """Mixed into an attention: each query sees itself and the 3 keys before it (Beltagy et al. 2020)."""

    window = 4

    def attend(self, q, k, v, bias):
        import torch.nn.functional as F

        from gptkit.components.attention import causal_mask

        t_q, t_k = q.size(-2), k.size(-2)
        near = causal_mask(t_q, t_k, q.device) & ~torch.ones(t_q, t_k, dtype=torch.bool).tril(t_k - t_q - self.window)
        scores = torch.zeros(t_q, t_k) if bias is None else bias
        return F.scaled_dot_product_attention(q, k, v, attn_mask=scores.masked_fill(~near, float("-inf")))


def test_an_attention_that_computes_another_function_on_purpose_opts_out_of_matching_naive(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Windowed(SlidingWindow, FlashAttention):
        matches_naive = False

    temporary_component("attention", "windowed", Windowed)
    results = {r.check: r for r in check_component("attention", "windowed")}
    assert results["matches naive"].status == "n/a"
    assert results["matches naive"].detail == "Windowed sets matches_naive = False: it computes another function " \
                                              "than naive attention"
    assert all(r.status != "fail" for r in results.values()), [(r.check, r.detail) for r in results.values()]


def test_not_matching_naive_names_every_partner_and_the_opt_out(temporary_component):
    from gptkit.components.attention import FlashAttention

    class Windowed(SlidingWindow, FlashAttention):
        pass

    temporary_component("attention", "windowed", Windowed)
    detail = run_check("matches naive", parse_component("attention", "windowed")).detail
    for name in registry("positional").names():  # with each of them, not only the first
        assert f"positional {name}: AssertionError: outputs differ from naive attention by" in detail, name
    assert detail.endswith(". An attention meant to compute another function (a sliding window, say) sets "
                           "matches_naive = False on its class")


@pytest.fixture
def clash(monkeypatch):
    """clash(kind, name): an installed distribution's metadata claims `name` too (nothing is imported)."""
    from importlib import metadata

    from gptkit import plugins

    monkeypatch.delenv("GPTKIT_NO_PLUGINS", raising=False)

    def add(kind, name):
        declared = {k: dict(v) for k, v in plugins._read().items()}
        entry_point = metadata.EntryPoint(name, "acme_clash:Thing", f"gptkit.{kind}")
        declared.setdefault(kind, {})[name] = [plugins.Plugin(kind, name, entry_point.value, "acme-clash", "2.0",
                                                              entry_point)]
        monkeypatch.setattr(plugins, "_declared", declared)

    return add


def test_an_unusable_default_of_the_test_model_is_one_error_not_every_check_failing(clash, cli):
    clash("norm", "rmsnorm")
    expected = ("the conformance test model uses the default norm 'rmsnorm', which is unusable: norm 'rmsnorm' is "
                "claimed by built-in and by acme-clash 2.0")
    with pytest.raises(RegistryError, match=f"^{expected}"):
        check_component("feedforward", "mlp")
    result = cli("check", "attention", "naive")
    assert result.exit_code == 2 and result.output.startswith(f"error: {expected}"), result.output
    assert len(result.output.splitlines()) == 1 and "Traceback" not in result.output
    # A schedule's and a corpus's checks build no test model: its defaults are none of their business
    for kind, name in (("schedule", "cosine"), ("corpus", "shakespeare")):
        result = cli("check", kind, name)
        assert result.exit_code == 0 and "unusable" not in result.output, result.output


def test_an_attention_without_attend_or_forward_is_refused_when_registered():
    from gptkit.components import Attention, AttentionParams
    from gptkit.components.positional import NoPositional
    from gptkit.registry import Registry

    reg = Registry("attention", Attention)
    Lazy = type("Lazy", (Attention,), {})
    with pytest.raises(RegistryError, match=r"^attention 'lazy': does not implement attend\(\) \(or a whole "
                                            r"forward\(x, cache=None\)\)$"):
        reg.register("lazy", Lazy)
    reg.register("whole", type("Whole", (Attention,), {"forward": lambda self, x, cache=None: x}))
    with pytest.raises(NotImplementedError, match=r"^Lazy implements neither attend\(q, k, v, bias\) nor a whole "
                                                  r"forward\(x, cache=None\)$"):
        Lazy(CONFIG, AttentionParams(), NoPositional(CONFIG, NoPositional.Params()))(torch.zeros(1, 2, CONFIG.n_embd))


@pytest.mark.parametrize("kind, methods, refused", [
    ("attention", {"attend": lambda self, q, k, v: q}, "its attend(q, k, v) cannot be called as gptkit calls "
     "it: attend(q, k, v, bias)"),
    ("positional", {"rotate": lambda self, q, k: (q, k)}, "its rotate(q, k) cannot be called as gptkit calls it: "
     "rotate(q, k, start)"),
    ("norm", {"forward": lambda self, x, eps: x}, "its forward(x, eps) cannot be called as gptkit calls it: "
     "forward(x)"),
    ("schedule", {"factor": lambda self: 1.0}, "its factor() cannot be called as gptkit calls it: "
     "factor(step)"),
    ("attention", {"forward": lambda self, x: x}, None),  # no cache: sampled by recomputing the context
    ("positional", {"rotate": lambda self, *qk_start: qk_start[:2]}, None),
    ("norm", {"forward": lambda self, x, scale=1.0: x * scale}, None),
    ("schedule", {"factor": staticmethod(lambda step: 1.0)}, None),  # bound otherwise, called the same
    ("attention", {"attend": staticmethod(lambda q, k, v, bias: q)}, None),
    ("attention", {"attend": lambda self, q, k, v, bias: q, "qkv_width": classmethod(lambda cls, config, params: 96)},
     None),
    ("feedforward", {"forward": type("Doubles", (), {"__call__": lambda self, x: 2 * x})()}, None),
    ("schedule", {"factor": staticmethod(lambda: 1.0)}, "its factor() cannot be called as gptkit calls it: "
     "factor(step)"),
    ("norm", {"forward": lambda self, x: x, "check": lambda self, config, params: None},  # @classmethod forgotten
     "its check(self, config, params) cannot be called as gptkit calls it: check(config, params)"),
    ("norm", {"forward": lambda self, x: x, "check": staticmethod(lambda config, params: None)}, None),
])
def test_a_method_that_cannot_take_what_gptkit_passes_is_refused_when_registered(kind, methods, refused):
    from gptkit.registry import Registry

    base = registry(kind).base
    reg = Registry(kind, base)
    cls = type("Mine", (base,), methods)
    if refused is None:
        reg.register("mine", cls)
    else:
        with pytest.raises(RegistryError, match=f"^{kind} 'mine': {re.escape(refused)}$"):
            reg.register("mine", cls)


class Gate(torch.nn.Linear):
    """A part with an init_weights() of its own, inside a component's: the component's runs after it."""

    def init_weights(self):
        torch.nn.init.zeros_(self.weight)
        torch.nn.init.constant_(self.bias, -1.0)


def gated_feedforward(hook: bool):
    """An MLP times a sigmoid gate whose bias is -4 (closed at init), set in __init__ and, with `hook`,
    again in init_weights(), where its gate is a `Gate`."""
    from gptkit.components.feedforward import MLP

    class Gated(MLP):
        def __init__(self, config, params):
            super().__init__(config, params)
            self.gate = (Gate if hook else torch.nn.Linear)(config.n_embd, config.n_embd)
            torch.nn.init.constant_(self.gate.bias, -4.0)

        def forward(self, x):
            return super().forward(x) * torch.sigmoid(self.gate(x))

    if hook:
        Gated.init_weights = lambda self: self.gate.bias.fill_(-4.0)  # in place: the model runs it without grad
    return Gated


def test_a_component_with_init_weights_keeps_its_values_and_the_rest_gets_gpt2s_init(temporary_component):
    import math

    temporary_component("feedforward", "gated", gated_feedforward(hook=True))
    torch.manual_seed(0)
    model = tiny_model(feedforward="gated")
    for block in model.transformer.h:
        assert torch.equal(block.mlp.gate.bias, torch.full_like(block.mlp.gate.bias, -4.0))  # the component's last
        assert torch.equal(block.mlp.gate.weight, torch.zeros_like(block.mlp.gate.weight))  # its part's own hook
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.1)  # GPT-2's, as everywhere else
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(2 * CONFIG.n_layer), rel=0.1)


def test_a_component_without_init_weights_gets_gpt2s_init(temporary_component):
    temporary_component("feedforward", "gated", gated_feedforward(hook=False))
    torch.manual_seed(0)
    gate = tiny_model(feedforward="gated").transformer.h[0].mlp.gate
    assert torch.equal(gate.bias, torch.zeros_like(gate.bias))  # the -4 set in __init__ is overwritten
    assert gate.weight.std().item() == pytest.approx(0.02, rel=0.1)


PART = {"attention": ".attn.", "feedforward": ".mlp.", "norm": "ln_", "positional": "pos."}


@pytest.mark.parametrize("kind, name", [(k, n) for k in PART for n in registry(k).names()])
def test_a_swapped_component_leaves_the_rest_of_the_model_as_it_starts(kind, name):
    """An ablation's arms of one seed start every part they share from the same values, and draw the same
    afterwards (dropout): only the component swapped differs, whatever its constructor drew."""
    def built(**components):
        torch.manual_seed(0)
        model = tiny_model(**components)
        return model.state_dict(), torch.rand(4)

    (base, after), (swapped, after_swapped) = built(), built(**{kind: name})
    shared = [k for k in base if k in swapped and PART[kind] not in k and base[k].shape == swapped[k].shape]
    assert "transformer.wte.weight" in shared and all(torch.equal(base[k], swapped[k]) for k in shared)
    assert torch.equal(after, after_swapped)


def test_a_shared_positionals_init_weights_runs_before_the_attentions_that_hold_it(temporary_component):
    calls = []

    class Pos(registry("positional").get("learned")):
        def init_weights(self):
            calls.append("pos")

    class Attn(registry("attention").get("flash")):
        def init_weights(self):  # may set what its positional holds: it has the last word
            calls.append("attn")

    temporary_component("positional", "pos_hook", Pos)
    temporary_component("attention", "attn_hook", Attn)
    tiny_model(positional="pos_hook", attention="attn_hook")
    assert calls == ["pos"] + ["attn"] * CONFIG.n_layer  # once each, the shared positional first


def test_an_init_weights_that_raises_is_blamed_on_its_component(temporary_component):
    from gptkit.errors import ComponentError

    class Broken(gated_feedforward(hook=False)):
        def init_weights(self):
            raise ValueError("no gate here")

    temporary_component("feedforward", "broken", Broken)
    with pytest.raises(ComponentError, match=r"^feedforward 'broken' from test is broken: its init_weights\(\) raised "
                                             r"ValueError: no gate here \(at .*test_components.py:\d+\)$"):
        tiny_model(feedforward="broken")


def test_a_check_runs_again_with_the_texts_vocabulary(write_recipe, cli, tmp_path, scratch_registries):
    import textwrap

    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from gptkit.components import register
        from gptkit.components.norm import RMSNorm

        @register("norm", "smallvocab")
        class SmallVocab(RMSNorm):
            @classmethod
            def check(cls, config, params):
                if config.vocab_size > 20:
                    raise ValueError(f"at most 20 tokens, not {config.vocab_size}")
    """))
    path = write_recipe(imports=["mine.py"], model={"norm": "smallvocab"})
    line = path.read_text().splitlines().index("  norm: smallvocab") + 1  # named by its line, as validation names keys
    expected = f"error: {path}:{line}: model.norm: smallvocab: at most 20 tokens, not 47 (with vocab_size 47)"
    validated = cli("validate", path)  # the recipe alone passes (vocab_size 1); validate reads the text, as run does
    assert validated.exit_code == 2 and validated.output.splitlines() == [expected], validated.output
    result = cli("run", path, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.splitlines() == [expected]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
