"""Every registered model component, and every attention x positional pair, against the contract.

Parametrized over the registry: a newly registered component is tested with no new test code.
"""

import itertools

import pytest
import torch

from gptkit.conformance import CHECKS, CONFIG, MODEL_KINDS, _tokens, check_component, tiny_model
from gptkit.registry import registry

COMPONENTS = [(kind, name) for kind in MODEL_KINDS for name in registry(kind).names()]
PAIRS = list(itertools.product(registry("attention").names(), registry("positional").names()))


@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_component_conformance(kind, name):
    results = check_component(kind, name)
    assert [r.check for r in results] == list(CHECKS)
    failed = [f"{r.check}: {r.detail}" for r in results if r.status == "fail"]
    assert not failed, failed


@pytest.mark.parametrize("attention,positional", PAIRS, ids=[f"{a}-{p}" for a, p in PAIRS])
class TestAttentionPositionalPair:
    def test_shape_finite_backward(self, attention, positional):
        model = tiny_model(attention=attention, positional=positional)
        x = _tokens(CONFIG)
        logits, loss = model(x, x)
        assert logits.shape == (*x.shape, CONFIG.vocab_size)
        assert torch.isfinite(logits).all()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    def test_causal(self, attention, positional):
        model = tiny_model(attention=attention, positional=positional).eval()
        x = _tokens(CONFIG)
        for t in (1, CONFIG.block_size // 2, CONFIG.block_size - 1):
            changed = x.clone()
            changed[:, t:] = (changed[:, t:] + 3) % CONFIG.vocab_size
            with torch.no_grad():
                assert torch.allclose(model(x)[0][:, :t], model(changed)[0][:, :t], atol=1e-6)
                assert not torch.allclose(model(x)[0][:, t:], model(changed)[0][:, t:])

    def test_matches_naive_outputs_and_gradients(self, attention, positional):
        torch.manual_seed(0)
        reference = tiny_model(attention="naive", positional=positional)
        model = tiny_model(attention=attention, positional=positional)
        try:
            model.load_state_dict(reference.state_dict())
        except RuntimeError:
            pytest.skip(f"{attention}'s weights are not interchangeable with naive attention's")
        x = _tokens(CONFIG)
        (out_ref, loss_ref), (out, loss) = reference(x, x), model(x, x)
        torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-4)
        loss_ref.backward()
        loss.backward()
        for (name, p), p_ref in zip(model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


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


@pytest.mark.parametrize("n_embd", [128, 256, 768])
def test_swiglu_and_mlp_have_comparable_parameter_counts(n_embd):
    from gptkit.components import GPTConfig
    from gptkit.recipe.components import parse_component

    config = GPTConfig(vocab_size=10, n_embd=n_embd)
    counts = {name: sum(p.numel() for p in parse_component("feedforward", name).build(config).parameters())
              for name in ("mlp", "swiglu")}
    assert abs(counts["swiglu"] - counts["mlp"]) / counts["mlp"] < 0.02


def test_alibi_slopes_follow_the_paper():
    from gptkit.components.positional import ALiBi

    assert ALiBi.head_slopes(8).tolist() == pytest.approx([2 ** -(i + 1) for i in range(8)])
    assert len(ALiBi.head_slopes(6)) == 6
