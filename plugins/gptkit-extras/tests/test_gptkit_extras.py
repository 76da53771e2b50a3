"""gptkit-extras against gptkit's conformance kit, plus what each component promises beyond it.

Run from the gptkit repository root with `pytest plugins/gptkit-extras/tests`, or from here with
`pytest`, once this package is installed (`pip install -e plugins/gptkit-extras`).
"""

from importlib import metadata

import pytest
import torch
from gptkit.components import GPTConfig
from gptkit.conformance import CONFIG, assert_conformant, check_component, tiny_model
from gptkit.recipe.components import parse_component
from gptkit.registry import registry

# Every component this package declares, read from its installed metadata: a new entry point is
# tested with no new test code.
DECLARED = sorted((ep.group.removeprefix("gptkit."), ep.name)
                  for ep in metadata.distribution("gptkit-extras").entry_points if ep.group.startswith("gptkit."))


def test_declares_components_in_several_kinds():
    assert {kind for kind, _ in DECLARED} == {"attention", "feedforward", "norm", "positional"}


@pytest.mark.parametrize("kind,name", DECLARED, ids=[f"{k}-{n}" for k, n in DECLARED])
def test_conformant(kind, name):
    assert_conformant(kind, name)
    assert registry(kind).find(name).source.startswith("gptkit-extras ")


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_gqa_is_conformant_for_every_grouping(n_kv_head):
    results = {r.check: r for r in check_component("attention", {"name": "gqa", "n_kv_head": n_kv_head})}
    assert all(r.status != "fail" for r in results.values()), results
    assert results["every partner"].status == "pass"  # rope, alibi, t5bias, ...
    # with one key/value head per query head it is ordinary multi-head attention, weight for weight
    assert results["matches naive"].status == ("pass" if n_kv_head == CONFIG.n_head else "n/a")


def test_gqa_shrinks_the_key_value_projections():
    def c_attn_rows(n_kv_head):
        model = tiny_model(attention={"name": "gqa", "n_kv_head": n_kv_head})
        return model.transformer.h[0].attn.c_attn.weight.shape[0]

    hs = CONFIG.n_embd // CONFIG.n_head
    assert c_attn_rows(4) == 3 * CONFIG.n_embd
    assert c_attn_rows(1) == CONFIG.n_embd + 2 * hs  # multi-query: one key and one value head


def test_gqa_builds_only_its_own_projections(monkeypatch):
    """Not the full 3 * n_embd projection first, thrown away: at a large n_embd, that is a layer's weights."""
    widths = []
    init = torch.nn.Linear.__init__
    monkeypatch.setattr(torch.nn.Linear, "__init__", lambda self, i, o, **kw: (widths.append(o), init(self, i, o, **kw))[1])
    spec = parse_component("attention", {"name": "gqa", "n_kv_head": 1})
    spec.build(CONFIG, registry("positional").get("none")(CONFIG, None))
    hs = CONFIG.n_embd // CONFIG.n_head
    assert sorted(widths) == [CONFIG.n_embd, CONFIG.n_embd + 2 * hs]  # c_proj, c_attn


def test_gqa_caches_only_its_key_value_heads():
    model = tiny_model(attention={"name": "gqa", "n_kv_head": 1}).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.zeros(2, 5, dtype=torch.long), cache=cache)
    assert cache[0].k.shape == cache[0].v.shape == (2, 1, 5, CONFIG.n_embd // CONFIG.n_head)  # (B, nkv, T, hs)


def test_gqa_refuses_a_grouping_that_does_not_divide_the_heads():
    spec = parse_component("attention", {"name": "gqa", "n_kv_head": 3})
    with pytest.raises(ValueError, match="n_head 4 is not divisible by n_kv_head 3"):
        spec.cls.check(CONFIG, spec.params)


def test_t5_buckets_are_exact_near_and_logarithmic_far():
    pos = parse_component("positional", {"name": "t5bias", "buckets": 8, "max_distance": 64}).build(
        GPTConfig(vocab_size=10, block_size=128, n_head=2, n_embd=16))
    buckets = pos.bucket(torch.arange(200)).tolist()
    assert buckets[:4] == [0, 1, 2, 3]  # the first half of the buckets: one per distance
    sizes = [buckets.count(b) for b in range(8)]  # distances per bucket
    assert buckets == sorted(buckets) and sizes[4] < sizes[5] < sizes[6]  # wider and wider further away
    assert set(buckets[64:]) == {7}  # beyond max_distance, all share the last bucket
    bias = pos.score_bias(5, 5)
    assert bias.shape == (2, 5, 5)
    assert torch.equal(bias[:, 2, 1], bias[:, 4, 3])  # depends on distance only


def test_geglu_and_relu2_compute_their_formulas():
    config = GPTConfig(vocab_size=10, n_embd=16)
    x = torch.randn(2, 3, 16)
    geglu = parse_component("feedforward", "geglu").build(config)
    gate, value = geglu.c_fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(geglu(x), geglu.c_proj(torch.nn.functional.gelu(gate) * value))
    relu2 = parse_component("feedforward", "relu2").build(config)
    torch.testing.assert_close(relu2(x), relu2.c_proj(torch.relu(relu2.c_fc(x)) ** 2))


def test_norms_start_where_their_papers_say():
    config = GPTConfig(vocab_size=10, n_embd=16)
    x = torch.randn(2, 3, 16)
    scalenorm = parse_component("norm", "scalenorm").build(config)
    torch.testing.assert_close(scalenorm(x).norm(dim=-1), torch.full((2, 3), 4.0))  # g = sqrt(16)
    dyt = parse_component("norm", {"name": "dyt", "alpha": 0.5}).build(config)
    torch.testing.assert_close(dyt(x), torch.tanh(0.5 * x))
