"""The contract of the kinds that are not part of the model (schedule, optimizer, corpus) against
subtly broken components; every registered one is checked in test_components.py."""

import dataclasses
import itertools
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from gptkit.components import Corpus, Optimizer, Schedule
from gptkit.conformance import CHECKS, CONFIG, assert_conformant, check_component
from gptkit.errors import UserError
from gptkit.registry import kinds, registry


class Linear(Schedule):
    """Decays to 0 at the 100th step, whatever the run's length."""

    def factor(self, step):
        return 1 - step / 100  # negative from step 101 on


class PerCall(Schedule):
    """Decays with every call instead of with the step: a resumed run starts from the top again."""

    def __init__(self, params, total_steps):
        super().__init__(params, total_steps)
        self.calls = 0

    def factor(self, step):
        self.calls += 1
        return 0.99**self.calls


class ToTheEnd(Schedule):
    """Linear decay to 0 at the last step: a run of one step divides by zero."""

    def factor(self, step):
        return 1 - step / (self.total_steps - 1)


class NaNFactor(Schedule):
    def factor(self, step):
        return math.nan


class Tensor(Schedule):
    def factor(self, step):
        return torch.tensor(1.0)


class NoStep(torch.optim.AdamW):
    def step(self, closure=None):
        return None


class BuildsLr(torch.optim.AdamW):
    """Steps with the lr it was built with, not the one the trainer sets in param_groups."""

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] = self.defaults["lr"]
        return super().step(closure)


class NoLoad(torch.optim.AdamW):
    def load_state_dict(self, state_dict):
        pass


class NoDecay(torch.optim.AdamW):
    def __init__(self, groups, lr):
        super().__init__([{**g, "weight_decay": 0.0} for g in groups], lr=lr)


class NoZeroGrad(torch.optim.AdamW):
    def zero_grad(self, set_to_none=True):
        pass


def component(optimizer: type[torch.optim.Optimizer]) -> type[Optimizer]:
    """An optimizer component building `optimizer`."""
    return type(optimizer.__name__, (Optimizer,), {"build": lambda self, groups, lr: optimizer(groups, lr=lr)})


class Empty(Corpus):
    def text(self):
        return ""


class Changing(Corpus):
    calls = itertools.count()

    def text(self):  # another text every time: a random one could come out the same twice
        return f"to be or not {next(self.calls)}"


BROKEN = [
    ("schedule", Linear, {"factors"}),
    ("schedule", PerCall, {"pure function of step"}),
    ("schedule", ToTheEnd, {"factors", "pure function of step"}),
    ("schedule", Tensor, {"factors"}),
    ("schedule", NaNFactor, {"factors"}),  # not "pure function of step" too: nan != nan
    ("optimizer", component(NoStep), {"lowers the loss", "honours weight_decay"}),
    ("optimizer", component(BuildsLr), {"honours lr"}),
    ("optimizer", component(NoLoad), {"resumes exactly"}),
    ("optimizer", component(NoZeroGrad), {"zero_grad", "resumes exactly"}),
    ("optimizer", type("NoDecay", (Optimizer,), {"build": lambda self, groups, lr: NoDecay(groups, lr)}),
     {"honours weight_decay"}),
    ("corpus", Empty, {"text"}),
    ("corpus", Changing, {"text"}),
]


@pytest.mark.parametrize("kind,cls,failing", BROKEN, ids=lambda v: getattr(v, "__name__", None))
def test_the_contract_catches_subtly_broken_components(temporary_component, kind, cls, failing):
    temporary_component(kind, "broken", cls)
    results = check_component(kind, "broken")
    assert {r.check for r in results if r.status == "fail"} == failing, [(r.check, r.detail) for r in results]
    assert [r.check for r in results] == [c for c, (kinds, _) in CHECKS.items() if kind in kinds]  # its kind's only


def test_a_failure_says_what_was_wrong(temporary_component):
    temporary_component("schedule", "linear", Linear)
    detail = next(r.detail for r in check_component("schedule", "linear") if r.check == "factors")
    assert detail == ("AssertionError: factor(101) = -0.010000000000000009 with total_steps=1000; a factor must be a "
                      "finite number >= 0")


def test_a_tensor_factor_is_said_to_be_a_tensor_not_a_negative_number(temporary_component):
    temporary_component("schedule", "tensor", Tensor)
    detail = next(r.detail for r in check_component("schedule", "tensor") if r.check == "factors")
    assert detail == ("AssertionError: factor(0) = tensor(1.) with total_steps=1; a factor must be a Python number "
                      "(a float), not a torch.Tensor: return its .item(), or compute it with math")


def test_check_takes_every_kind(cli):
    result = cli("check", "schedule", "cosine", "--param", "warmup_steps=3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "schedule 'cosine' with warmup_steps=3 from built-in; on cpu"  # which configuration passed
    assert any(line.split()[:2] == ["factors", "PASS"] for line in lines)
    assert not any(line.split()[:1] == ["causal"] for line in lines)  # a model component's check: not listed
    result = cli("check", "schedul", "cosine")
    assert result.exit_code == 2 and "unknown component kind 'schedul' (did you mean 'schedule'?)" in result.output


@pytest.mark.parametrize("optimizer", [torch.optim.RMSprop, torch.optim.SGD, torch.optim.Adagrad])
def test_torch_optimizers_with_their_own_good_rates_conform(temporary_component, optimizer):
    temporary_component("optimizer", "theirs", component(optimizer))
    assert_conformant("optimizer", "theirs")


BROKEN_SOURCE = """
from gptkit.components import Norm, Schedule, register

@register("norm", "pooled")
class Pooled(Norm):
    \"\"\"Subtracts the mean over the time axis: every output sees the whole sequence.\"\"\"

    def forward(self, x):
        return x - x.mean(dim=1, keepdim=True)

@register("schedule", "linear")
class Linear(Schedule):
    def factor(self, step):
        return 1 - step / 100
"""


def under_optimize(tmp_path, *args) -> subprocess.CompletedProcess:
    """python -O ARGS in tmp_path, with BROKEN_SOURCE in tmp_path/broken.py: -O strips assert statements."""
    (tmp_path / "broken.py").write_text(BROKEN_SOURCE)
    return subprocess.run([sys.executable, "-O", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_check_fails_a_broken_component_under_python_O(tmp_path):
    result = under_optimize(tmp_path, "-m", "gptkit", "check", "norm", "pooled", "--import", "broken.py")
    assert result.returncode == 1, result.stdout + result.stderr
    causal = next(line.split(maxsplit=2) for line in result.stdout.splitlines() if line.split()[:1] == ["causal"])
    assert causal[1:] == ["FAIL", "AssertionError: changing a later token changed an earlier output (eval mode, "
                                  "tokens from position 1 on changed)"]


def test_assert_conformant_raises_under_python_O(tmp_path):
    code = textwrap.dedent("""
        import pathlib
        from gptkit.conformance import assert_conformant
        from gptkit.plugins import import_file
        import_file(pathlib.Path("broken.py").absolute())
        try:
            assert_conformant("schedule", "linear")
        except AssertionError as e:
            print(e)
        else:
            print("conformant")
    """)
    result = under_optimize(tmp_path, "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("factors: AssertionError: factor(101) = "), result.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind, name", [(k, n) for k in kinds() if k != "corpus" for n in registry(k).names()])
def test_checks_run_on_the_gpu(kind, name):
    results = check_component(kind, name, device="cuda")
    assert all(r.status in ("pass", "n/a") for r in results), [(r.check, r.status, r.detail) for r in results]


def test_checks_run_on_the_device_asked_for(temporary_component):
    from gptkit.components import FeedForward

    seen = set()

    class Where(FeedForward):
        def forward(self, x):
            seen.add(x.device.type)
            return x

    temporary_component("feedforward", "where", Where)
    check_component("feedforward", "where", device="meta")  # shapes without numbers: checks of values fail there
    assert seen == {"meta"} and torch.get_default_device().type == "cpu"  # and the default is put back


def test_check_on_a_missing_gpu_is_one_error(cli, no_gpu):
    result = cli("check", "norm", "rmsnorm", "--device", "cuda")
    assert result.exit_code == 2 and "error: --device: cuda was asked for, but no such CUDA device is visible" \
        in result.output, result.output


def test_a_positional_with_a_scalar_parameter_is_checked(temporary_component):
    from gptkit.components.positional import Learned

    class ScaledLearned(Learned):
        def __init__(self, config, params):
            super().__init__(config, params)
            self.gain = torch.nn.Parameter(torch.tensor(1.0))  # 0-dimensional: randomised like any other

        def embed(self, x, start=0):
            return x + self.gain * (super().embed(x, start) - x)

    temporary_component("positional", "scaled-learned", ScaledLearned)
    results = {r.check: r for r in check_component("positional", "scaled-learned")}
    assert results["offsets"].status == "pass", results["offsets"]


def test_a_cache_bug_hidden_by_the_initial_weights_fails_the_kv_cache_check(temporary_component):
    from gptkit.components.attention import NaiveAttention

    class LogScaled(NaiveAttention):
        """A learned temperature applied in full passes only: unseen while it is exp(0) = 1."""

        def __init__(self, config, params, pos):
            super().__init__(config, params, pos)
            self.logscale = torch.nn.Parameter(torch.zeros(config.n_head, 1, 1))

        def attend(self, q, k, v, bias):
            return super().attend(q * self.logscale.exp() if q.size(-2) == k.size(-2) else q, k, v, bias)

    temporary_component("attention", "logscaled", LogScaled)
    results = {r.check: r for r in check_component("attention", "logscaled")}
    assert results["kv cache"].status == "fail", results["kv cache"]
    assert results["kv cache"].detail.startswith("AssertionError: cached logits differ from a full forward pass by ")
    assert "the queries being the last t_q positions" in results["kv cache"].detail  # what a cached pass hands it


def test_a_norm_that_computes_otherwise_on_one_position_fails_the_kv_cache_check(temporary_component):
    """Causal and deterministic, but a cached step feeds it one position at a time, a full pass all of them."""
    from gptkit.components.norm import RMSNorm

    class ShortSequencesOnly(RMSNorm):
        def forward(self, x):
            return super().forward(x) * (2.0 if x.size(1) == 1 else 1.0)

    temporary_component("norm", "one-position-doubled", ShortSequencesOnly)
    results = {r.check: r for r in check_component("norm", "one-position-doubled")}
    assert results["kv cache"].status == "fail", results["kv cache"]
    assert results["causal"].status == "pass", results["causal"]


def test_check_takes_the_test_models_sizes(cli, temporary_component):
    from gptkit.components import Norm

    class Grouped(Norm):
        @classmethod
        def check(cls, config, params):
            if config.n_embd % 48:
                raise ValueError(f"needs n_embd a multiple of 48, got {config.n_embd}")

        def forward(self, x):
            return x

    temporary_component("norm", "grouped", Grouped)
    refused = cli("check", "norm", "grouped")
    assert refused.exit_code == 2 and refused.output == (
        "error: norm 'grouped' cannot be checked with the test model's sizes (n_embd=32, n_head=4, block_size=16, "
        "vocab_size=17): needs n_embd a multiple of 48, got 32; set others with --n-embd, --n-head, --block-size and "
        "--vocab-size\n"), refused.output
    result = cli("check", "norm", "grouped", "--n-embd", "48", "--n-head", "6", "--block-size", "8", "--vocab-size", "40")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("norm 'grouped' from test; the test model has n_embd=48, n_head=6, block_size=8, "
                                    "vocab_size=40")
    # Sizes the test model's own defaults refuse are said once, not as every check failing.
    result = cli("check", "norm", "grouped", "--n-embd", "48", "--n-head", "5")
    assert result.exit_code == 2 and "the test model's default attention 'flash' refuses them: n_embd 48 is not " \
        "divisible by n_head 5; set others with --n-embd" in result.output, result.output
    # with a --param too: the sizes are at fault, not the parameter
    result = cli("check", "norm", "rmsnorm", "--param", "eps=1e-6", "--n-head", "5")
    assert result.exit_code == 2 and result.output.startswith(
        "error: norm 'rmsnorm' cannot be checked with the test model's sizes (n_embd=32, n_head=5, "), result.output
    assert "--param" not in result.output and "default attention 'flash' refuses them" in result.output


def test_a_param_the_components_check_refuses_is_blamed_not_the_test_models_sizes(cli, temporary_component):
    from pydantic import Field

    from gptkit.components import Params
    from gptkit.components.feedforward import MLP

    class ActParams(Params):
        act: str = Field("relu")
        hidden: int | None = None
        bias: bool = False

    class Activated(MLP):
        Params = ActParams

        @classmethod
        def check(cls, config, params):
            if params.act not in ("relu", "gelu"):
                raise ValueError("act must be relu or gelu")
            if config.n_embd % 16:
                raise ValueError(f"needs n_embd a multiple of 16, got {config.n_embd}")

    temporary_component("feedforward", "activated", Activated)
    refused = cli("check", "feedforward", "activated", "--param", "act=tanh")
    assert refused.exit_code == 2 and refused.output == "error: --param act=tanh: feedforward 'activated': act must " \
        "be relu or gelu\n", refused.output
    sizes = cli("check", "feedforward", "activated", "--param", "act=gelu", "--n-embd", "40", "--n-head", "4")
    assert sizes.exit_code == 2 and "cannot be checked with the test model's sizes (n_embd=40" in sizes.output


@pytest.mark.parametrize("key, value, limit", [("n_embd", 70000, 65536), ("block_size", 2_000_000, 2**20)])
def test_sizes_past_a_recipes_limit_are_one_error_before_anything_is_built(cli, temporary_component, key, value,
                                                                             limit):
    from gptkit.components import FeedForward

    built = []

    class Recorded(FeedForward):  # allocates nothing: the test cannot run out of memory whatever it is given
        def __init__(self, config, params):
            super().__init__(config, params)
            built.append(config)

        def forward(self, x):
            return x

    temporary_component("feedforward", "recorded", Recorded)
    reason = f"Input should be less than or equal to {limit}, as in a recipe"
    with pytest.raises(UserError, match=f"^config.{key} {value}: {reason}$"):
        check_component("feedforward", "recorded", dataclasses.replace(CONFIG, **{key: value}))
    option = f"--{key.replace('_', '-')}"
    result = cli("check", "feedforward", "recorded", option, value)
    assert result.exit_code == 2 and result.output == f"error: {option} {value}: {reason}\n", result.output
    assert not built


def test_partners_that_refuse_the_test_sizes_are_said_to_be_left_out():
    results = {r.check: r for r in check_component("attention", "naive", dataclasses.replace(CONFIG, n_embd=36))}
    assert results["every partner"].status == "pass"  # head size 9: rope has no pairs of channels to rotate
    assert results["every partner"].detail == ("positional rope skipped: it refuses the test sizes (rope needs an even "
                                               "head size, but n_embd/n_head = 36/4 = 9; pick n_head so that "
                                               "n_embd/n_head is even)")


def test_an_unusable_partner_is_said_to_be_left_out(monkeypatch):
    from gptkit.registry import Entry, registry

    broken = Entry("positional", "gone", None, "a-package 1.0", error="positional 'gone' from a-package 1.0 is broken: "
                                                                        "its module was not found\nsecond line")
    monkeypatch.setitem(registry("positional")._entries, "gone", broken)
    results = {r.check: r for r in check_component("attention", "naive")}
    assert results["every partner"].status == "pass" and results["every partner"].detail == (
        "positional gone skipped: unusable (positional 'gone' from a-package 1.0 is broken: its module was not found)")


def test_a_vocabulary_past_every_unicode_character_is_refused(cli):
    result = cli("check", "feedforward", "mlp", "--vocab-size", 0x110001)
    assert result.exit_code == 2 and result.output == ("error: --vocab-size 1114113: must be a whole number from 1 to "
                                                       "1,114,112, the characters a text can hold\n"), result.output


def test_a_vocabulary_of_one_character_has_no_causality_to_check():
    results = {r.check: r for r in check_component("norm", "rmsnorm", dataclasses.replace(CONFIG, vocab_size=1))}
    assert results["causal"].status == "n/a" and "one character" in results["causal"].detail
    assert [r.check for r in results.values() if r.status == "fail"] == []


@pytest.mark.parametrize("setting", ["no_grad", "inference_mode", "autocast", "float64"])
def test_the_checks_run_under_gptkits_defaults_whatever_the_caller_set(setting):
    import contextlib

    def float64():
        torch.set_default_dtype(torch.float64)
        try:
            yield
        finally:
            torch.set_default_dtype(torch.float32)

    around = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode,
              "autocast": lambda: torch.autocast("cpu", dtype=torch.bfloat16),
              "float64": contextlib.contextmanager(float64)}[setting]
    with around():
        results = check_component("attention", "naive") + check_component("feedforward", "mlp")
    assert [(r.check, r.detail) for r in results if r.status == "fail"] == []
    assert next(r for r in results if r.check == "every partner").detail == ""  # every partner tested, none skipped


def test_running_out_of_memory_is_one_error_naming_the_sizes(cli, monkeypatch):
    from gptkit import conformance

    def out_of_memory(spec, config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)")

    kinds, _ = conformance.CHECKS["deterministic"]
    monkeypatch.setitem(conformance.CHECKS, "deterministic", (kinds, out_of_memory))
    result = cli("check", "attention", "naive", "--n-embd", "64", "--n-head", "1")
    assert result.exit_code == 2 and result.output == (
        "error: the test model does not fit in memory on cpu (n_embd=64, n_head=1, block_size=16, vocab_size=17, "
        "n_layer=2); use smaller --n-embd/--n-head/--block-size/--vocab-size\n"), result.output
    with pytest.raises(UserError) as e:  # from Python: the config's fields
        check_component("attention", "naive", dataclasses.replace(CONFIG, n_embd=64, n_head=1))
    assert str(e.value) == ("the test model does not fit in memory on cpu (n_embd=64, n_head=1, block_size=16, "
                            "vocab_size=17, n_layer=2); use a config with smaller n_embd, n_head, block_size or "
                            "vocab_size")


@pytest.mark.parametrize("spec, device, message", [
    ({"name": "mlp", "hidden": "x"}, "cpu", r"feedforward 'mlp': hidden: Input should be a valid integer \(got 'x'\)"),
    ({"hidden": 64}, "cpu", r"feedforward: name: say which feedforward to use with 'name: \.\.\.'; one of: .*mlp.*"),
    ("mlp", "cuda", r"device: cuda was asked for, but no such CUDA device is visible; use auto or cpu"),
    ("mlp", "cdua", r"device: unknown device 'cdua'; use auto, cpu, cuda, cuda:N or mps"),
])
def test_a_mistake_in_what_check_component_is_asked_is_one_user_error(spec, device, message, no_gpu):
    with pytest.raises(UserError, match=f"^{message}$"):
        check_component("feedforward", spec, device=device)


def test_randomising_for_the_cache_check_gives_each_tensor_values_of_its_own():
    # Every layer's norm gain starts at ones: randomised alike, a cache path that took one layer's for
    # another's would still match the full pass.
    from torch import nn

    from gptkit.diagnose import randomised

    layers = randomised(nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(8)]))
    assert not torch.equal(layers[0].weight, layers[1].weight)
    assert not torch.equal(layers[0].weight, layers[0].bias + 1)


def test_a_failed_construct_or_shape_check_is_said_once_and_the_rest_skipped(temporary_component):
    from gptkit.components.norm import Norm

    class Unbuildable(Norm):
        def __init__(self, config, params):
            raise RuntimeError("no weights today")  # raised here

    class Half(Norm):
        def forward(self, x):
            return x.half()

    temporary_component("norm", "unbuildable", Unbuildable)
    temporary_component("norm", "half", Half)
    for name, gate, detail in [("unbuildable", "construct", "no weights today (at "), ("half", "shape and dtype", "")]:
        results = check_component("norm", name)
        failed = [r for r in results if r.status == "fail"]
        assert [r.check for r in failed] == [gate], results
        after = results[[r.check for r in results].index(gate) + 1:]
        assert after and all(r.status == "n/a" and r.detail == f"skipped: {gate} failed" for r in after), after
        assert detail in failed[0].detail
    line = next(i for i, text in enumerate(open(__file__).read().splitlines(), 1) if text.endswith("# raised here"))
    assert check_component("norm", "unbuildable")[0].detail.endswith(f"(at {__file__}:{line})")


def test_weights_that_do_not_fit_naive_attentions_are_said_in_its_terms(temporary_component):
    """torch's own words speak of a checkpoint; here there is none, only naive attention's weights."""
    from gptkit.components.attention import FlashAttention

    class FewerKeys(FlashAttention):  # as grouped-query attention: fewer key/value heads, a narrower c_attn
        def qkv_width(self, config, params):
            return 2 * config.n_embd

        def project(self, x):
            q, kv = self.c_attn(x).split(x.size(-1), dim=2)
            B, T, C = x.size()
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            k = kv.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            return q, k, k

    temporary_component("attention", "fewer_keys", FewerKeys)
    (row,) = [r for r in check_component("attention", "fewer_keys") if r.check == "matches naive"]
    assert row.status == "n/a" and row.detail == ("weights are not interchangeable with naive attention's: "
                                                  "transformer.h.0.attn.c_attn.weight is [64, 32] here, [96, 32] in "
                                                  "naive attention"), row
