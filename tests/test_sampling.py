"""Generation with and without the key/value cache, for every attention x positional pair."""

import itertools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptkit.components.attention import NaiveAttention
from gptkit.conformance import CONFIG, tiny_model
from gptkit.errors import UserError
from gptkit.registry import registry
from gptkit.sampling import generate

PAIRS = list(itertools.product(registry("attention").names(), registry("positional").names()))


def peaky_model(**components):
    """A tiny model with sharp attention and next-token distributions far from uniform, so that a
    wrong context or position changes which token is drawn."""
    torch.manual_seed(0)
    model = tiny_model(**components).eval()
    for block in model.transformer.h:
        torch.nn.init.normal_(block.attn.c_attn.weight, std=0.5)
    torch.nn.init.normal_(model.lm_head.weight, std=0.1)  # the likeliest token gets about half the mass
    return model


def run(model, prompt_len: int, top_k: int | None, use_cache: bool, tokens: int = 2 * CONFIG.block_size + 4):
    """Tokens generated, and the length of every sequence the model was fed."""
    fed = []
    hook = model.register_forward_pre_hook(lambda module, args: fed.append(args[0].size(1)))
    prompt = torch.randint(0, CONFIG.vocab_size, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, tokens, temperature=1.0, top_k=top_k,
                   generator=torch.Generator().manual_seed(2), use_cache=use_cache)
    hook.remove()
    return out, fed


@pytest.mark.parametrize("attention,positional", PAIRS, ids=[f"{a}-{p}" for a, p in PAIRS])
@pytest.mark.parametrize("top_k,prompt_len", [(1, 5), (None, CONFIG.block_size + 4)],
                         ids=["greedy", "sampled-long-prompt"])
def test_cached_and_recomputed_generation_give_the_same_tokens(attention, positional, top_k, prompt_len):
    model = peaky_model(attention=attention, positional=positional)
    assert model.supports_kv_cache
    (cached, fed_cached), (recomputed, fed_recomputed) = (run(model, prompt_len, top_k, c) for c in (True, False))
    assert torch.equal(cached, recomputed)
    if top_k is None:  # varied tokens, so a wrong context would show (greedy decoding of a random model repeats)
        assert len(set(cached[0, -CONFIG.block_size:].tolist())) > 3
    # The cache feeds one token per step, apart from the prompt and each restart of the full window.
    assert max(fed_recomputed) == CONFIG.block_size and sum(fed_cached) < sum(fed_recomputed) / 3
    assert fed_cached.count(1) > len(fed_cached) * 0.8


def test_the_context_never_exceeds_block_size_and_restarts_from_its_last_half():
    _, fed = run(peaky_model(), prompt_len=5, top_k=None, use_cache=False, tokens=2 * CONFIG.block_size)
    half = CONFIG.block_size // 2
    assert fed[: CONFIG.block_size - 4] == list(range(5, CONFIG.block_size + 1))
    assert fed[CONFIG.block_size - 4 : CONFIG.block_size - 4 + half] == list(range(half, CONFIG.block_size))


def test_a_cache_for_fewer_blocks_than_the_model_has_is_refused():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match=r"^the cache holds 1 layers' keys and values, the model has 2 blocks; make "
                                         r"one with model.new_cache\(\)$"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=model.new_cache()[:1])


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_model_with_nan_weights_is_refused_not_sampled_as_token_zero(use_cache):
    model = tiny_model().eval()
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^the model's logits are not finite \(NaN or inf\)"):
        generate(model, torch.zeros(1, 3, dtype=torch.long), 5, use_cache=use_cache)


def test_a_model_without_blocks_generates_without_a_cache():
    """A cache's length is where the next position starts: with no block to hold one, every token would
    be embedded at position 0."""
    model = tiny_model(positional="learned").eval()
    model.transformer.h = torch.nn.ModuleList()
    assert not model.supports_kv_cache
    prompt = torch.tensor([[1, 2, 3]])
    assert torch.equal(generate(model, prompt, 10, temperature=0), generate(model, prompt, 10, temperature=0,
                                                                             use_cache=False))


@pytest.mark.parametrize("says_it_caches", [False, True])  # True: inherited from a built-in, but forward(x) takes no cache
def test_attention_without_cache_support_falls_back_to_recomputation(temporary_component, says_it_caches):
    class Uncached(NaiveAttention):
        """An attention written before caching existed: forward takes x only."""

        supports_kv_cache = says_it_caches

        def forward(self, x):
            return super().forward(x)

    temporary_component("attention", "uncached", Uncached)
    model = peaky_model(attention="uncached")
    assert not model.supports_kv_cache
    out, fed = run(model, prompt_len=5, top_k=None, use_cache=True)
    assert out.shape == (2, 5 + 2 * CONFIG.block_size + 4) and 1 not in fed


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1e-9}, "temperature must be a finite number >= 0"),
    ({"temperature": -1.0}, "temperature must be a finite number >= 0"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0"),
    ({"top_k": 0}, "top_k must be None"),
    ({"tokens": -1}, "tokens must be a whole number"),
])
def test_sample_refuses_settings_that_cannot_sample(kwargs, message):
    from gptkit.data.vocab import Vocab
    from gptkit.sampling import sample

    args = {"tokens": 3, "temperature": 0.8, "top_k": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        sample(tiny_model(), Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)]), "A", **args)


@pytest.mark.parametrize("model, prompt, message", [
    ("run/model.pt", "A", "model must be a GPT (train_model's or load_model's first value), got str"),
    (None, 5, "prompt must be a string, e.g. 'ROMEO:' ('' or None for a newline), got int"),
])
def test_sample_names_an_argument_of_the_wrong_type(model, prompt, message):
    from gptkit.data.vocab import Vocab
    from gptkit.sampling import sample

    with pytest.raises(TypeError, match=re.escape(message)):
        sample(model or tiny_model(), Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)]), prompt, 3)


def test_a_seed_repeats_a_sample_and_no_seed_draws_anew():
    from gptkit.data.vocab import Vocab
    from gptkit.sampling import sample

    vocab = Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)])
    model = tiny_model()  # untrained: near-uniform over its vocabulary, so 40 tokens repeat by chance ~never
    assert sample(model, vocab, "A", 40, temperature=1.0, seed=3) == sample(model, vocab, "A", 40, temperature=1.0, seed=3)
    assert sample(model, vocab, "A", 40, temperature=1.0) != sample(model, vocab, "A", 40, temperature=1.0)
    draws = []
    for _ in range(2):  # no seed: torch's global generator, which a notebook seeds
        torch.manual_seed(7)
        draws.append(sample(model, vocab, "A", 40, temperature=1.0))
    assert draws[0] == draws[1] == sample(model, vocab, "A", 40, temperature=1.0, seed=7)  # the same stream


def test_sample_refuses_a_vocabulary_of_another_size():
    from gptkit.data.vocab import Vocab
    from gptkit.sampling import sample

    for size in (CONFIG.vocab_size - 1, CONFIG.vocab_size + 3):  # ids past the model's, or characters it never saw
        with pytest.raises(ValueError, match=rf"^vocab holds {size} characters, the model was trained with "
                                             rf"{CONFIG.vocab_size}: give the model's own Vocab"):
            sample(tiny_model(), Vocab([chr(65 + i) for i in range(size)]), "A", 3)


def test_a_prompts_line_endings_are_read_as_a_texts_are():
    """\\r\\n (a prompt pasted from Windows) and a lone \\r are \\n, which the vocabulary has; \\r it never has."""
    from gptkit.data.vocab import Vocab
    from gptkit.recipe.schema import SampleSection
    from gptkit.sampling import sample

    vocab = Vocab(["\n", *(chr(65 + i) for i in range(CONFIG.vocab_size - 1))])
    assert sample(tiny_model(), vocab, "A\r\nB\r", 3, seed=0).startswith("A\nB\n")
    assert SampleSection(prompt="ROMEO:\r\n").prompt == "ROMEO:\n"


def test_a_tiny_temperature_samples_the_likeliest_token_and_zero_always_does():
    from gptkit.sampling import next_token

    logits = torch.tensor([[1.0, 3.0, 2.0]])
    for temperature in (1e-40, 1e-300, 5e-324):  # the last two are 0 in float32: 0/0 would draw token 0
        assert next_token(logits, temperature, None, torch.Generator().manual_seed(0)).item() == 1, temperature
    assert next_token(torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 1.0]]), 0, 2, None).flatten().tolist() == [1, 0]


def test_greedy_sampling_from_the_command_line(tmp_path, write_recipe, cli):
    from gptkit import load_model, load_recipe, train
    from gptkit.sampling import sample

    run = train(load_recipe(write_recipe(sample={"temperature": 0})), runs_dir=tmp_path, quiet=True).run_dir
    model, _, vocab = load_model(run)
    greedy = sample(model, vocab, "A", 30, temperature=0)
    assert greedy == sample(model, vocab, "A", 30, temperature=0, top_k=None)  # no draw: no seed, no top-k needed
    result = cli("sample", run, "--prompt", "A", "--tokens", "30", "--temperature", "0")
    assert result.exit_code == 0 and result.stdout == greedy + "\n", result.output


def test_top_k_draws_only_from_the_k_likeliest_tokens():
    from gptkit.sampling import next_token

    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]]).expand(200, 4)  # 200 draws at once
    drawn = {k: set(next_token(logits, 1.0, k, torch.Generator().manual_seed(0)).flatten().tolist()) for k in (1, 2)}
    assert drawn == {1: {1}, 2: {1, 2}}


def test_generate_continues_a_datasets_own_tokens_and_its_output_may_train():
    model = peaky_model()
    prompt = torch.tensor([[1, 2, 3]], dtype=torch.uint8)  # as a dataset holds them (int32 past 256 characters)
    out = generate(model, prompt, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, generate(model, prompt.long(), 10, generator=torch.Generator().manual_seed(0)))
    assert out.dtype == torch.int64 and not out.is_inference()
    _, loss = model(out[:, :-1], out[:, 1:])
    loss.backward()  # generated ids fed back into training: autograd may save them


@pytest.mark.parametrize("ids, named", [([[0, CONFIG.vocab_size]], CONFIG.vocab_size), ([[-1, 0]], -1)])
def test_token_ids_outside_the_vocabulary_are_named(ids, named):
    with pytest.raises(ValueError, match=f"idx holds token id {named}, outside the model's vocabulary "
                                         f"\\(ids 0 to {CONFIG.vocab_size - 1}\\)"):
        generate(peaky_model(), torch.tensor(ids), 3)


def test_on_tokens_streams_every_new_token_once_without_changing_them():
    from gptkit.sampling import STREAM_EVERY

    model, chunks = peaky_model(), []
    prompt = torch.zeros(2, 3, dtype=torch.long)
    tokens = 2 * STREAM_EVERY + 5
    out = generate(model, prompt, tokens, generator=torch.Generator().manual_seed(2),
                   on_tokens=lambda ids: chunks.append(ids.clone()))
    assert [c.size(1) for c in chunks] == [STREAM_EVERY, STREAM_EVERY, 5]
    assert torch.equal(torch.cat(chunks, dim=1), out[:, 3:])
    assert torch.equal(out, generate(model, prompt, tokens, generator=torch.Generator().manual_seed(2)))


def sampled_by_the_command(monkeypatch, raise_at_token_100):
    """peaky_model, which `gptkit sample` loads as a run's (sample.prompt "AB"), raising
    `raise_at_token_100()` as it generates its 100th token; and its first 99 tokens, seed 5."""
    from types import SimpleNamespace

    from gptkit.data.vocab import Vocab
    from gptkit.recipe.schema import ModelSection, SampleSection
    from gptkit.sampling import sample

    model = peaky_model()
    vocab = Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)])
    expected = sample(model, vocab, "AB", 99, seed=5)  # the first 99 tokens of any longer sample with this seed
    forwards = []

    def at_token_100(module, args):
        forwards.append(torch.is_inference_mode_enabled())  # generating; not the check before it (no_grad)
        if sum(forwards) == 100:
            raise raise_at_token_100()

    model.register_forward_pre_hook(at_token_100)
    section = ModelSection(n_embd=CONFIG.n_embd, n_head=CONFIG.n_head, n_layer=CONFIG.n_layer,
                           block_size=CONFIG.block_size, dropout=CONFIG.dropout)  # peaky_model's
    recipe = SimpleNamespace(model=section, sample=SampleSection(prompt="AB"))
    monkeypatch.setattr("gptkit.cli.sample.load_model", lambda path, device, check: (model, recipe, vocab))
    return expected


def test_an_interrupted_sample_command_keeps_the_text_generated_so_far(cli, monkeypatch):
    """Ctrl-C during `gptkit sample` prints the text made before it, then exits 130 as interrupted."""
    expected = sampled_by_the_command(monkeypatch, KeyboardInterrupt)
    result = cli("sample", "some-run", "--tokens", "100000", "--seed", "5")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    assert result.stdout == expected


def test_a_sigterm_to_the_sample_command_keeps_the_text_generated_so_far(cli, monkeypatch):
    """As a Ctrl-C does, with SIGTERM's exit code; the text's line ended before the report."""
    from gptkit.errors import Interrupted

    expected = sampled_by_the_command(monkeypatch, lambda: Interrupted(signal.SIGTERM, "SIGTERM received while "
                                                                                         "sampling"))
    result = cli("sample", "some-run", "--tokens", "100000", "--seed", "5")
    assert result.exit_code == 143 and result.stderr == "stopped: SIGTERM received while sampling\n", result.stderr
    assert result.stdout == expected + "\n"


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_a_sigterm_to_a_sampling_process_is_heeded(tmp_path, write_recipe, cli):
    from gptkit import load_recipe, train

    run = train(load_recipe(write_recipe(train={"max_steps": 2})), runs_dir=tmp_path / "runs", quiet=True).run_dir
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "sample", str(run), "--tokens", "10000000", "--no-cache"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        proc.stdout.read(200)  # sampling under way
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.endswith("stopped: SIGTERM received while sampling\n"), err
    assert out.endswith("\n")


def test_a_sample_command_that_runs_out_of_memory_is_one_error_after_the_text_so_far(cli, monkeypatch):
    from conftest import CPU_OOM

    from gptkit.sampling import STREAM_EVERY

    expected = sampled_by_the_command(monkeypatch, lambda: RuntimeError(CPU_OOM))
    result = cli("sample", "some-run", "--tokens", "100000", "--seed", "5", "--device", "cpu")
    shown = expected[: len("AB") + STREAM_EVERY]  # streamed before the failing token (a Ctrl-C's streams the rest)
    assert result.exit_code == 2 and result.stdout == shown + "\n", result.output
    assert result.stderr == ("error: out of memory on cpu while sampling: the model needs more memory than it has "
                             "free; close other programs that use it\n")


def test_a_sample_command_that_runs_out_of_memory_loading_the_model_says_the_same(cli, monkeypatch):
    def load_model(path, device, check):
        raise MemoryError

    monkeypatch.setattr("gptkit.cli.sample.load_model", load_model)
    result = cli("sample", "some-run", "--device", "cpu")
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr == ("error: out of memory on cpu while sampling: the model needs more memory than it has "
                             "free; close other programs that use it\n")


def test_running_out_of_memory_sampling_on_a_gpu_says_to_sample_on_the_cpu():
    from gptkit.cli.sample import sampling_memory
    from gptkit.errors import OutOfMemory

    with pytest.raises(OutOfMemory) as e, sampling_memory(torch.device("cuda:0")):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert str(e.value) == ("out of memory on cuda:0 while sampling: the model needs more memory than it has free; "
                            "close other programs that use it, or sample on the CPU with --device cpu")


def test_the_machines_memory_running_out_under_a_gpu_sample_is_said_of_the_cpu():
    """A checkpoint is loaded through the machine's memory: the GPU is not what ran out there."""
    from conftest import CPU_OOM

    from gptkit.cli.sample import sampling_memory
    from gptkit.errors import OutOfMemory

    with pytest.raises(OutOfMemory) as e, sampling_memory(torch.device("cuda:0")):
        raise RuntimeError(CPU_OOM)
    assert str(e.value) == ("out of memory on cpu while sampling: the model needs more memory than it has free; "
                            "close other programs that use it")


def test_a_cache_bug_at_long_offsets_is_found_before_sampling_and_sampled_around(temporary_component):
    """A sliding window whose mask ignores the cache's offset agrees with a full pass over a few tokens; the
    check before sampling feeds a whole block too, its last tokens one at a time, as generation does."""
    from gptkit.diagnose import check_forward
    from gptkit.recipe.schema import ModelSection

    class Window(NaiveAttention):
        matches_naive = False

        def attend(self, q, k, v, bias):  # the last 4 keys, counted as if the queries were the first positions
            far = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril(-4)
            return super().attend(q, k, v, torch.zeros(far.shape).masked_fill(far, float("-inf")))

    temporary_component("attention", "window", Window)
    model = peaky_model(attention="window", positional="none")
    section = ModelSection(n_embd=CONFIG.n_embd, n_head=CONFIG.n_head, n_layer=CONFIG.n_layer, dropout=CONFIG.dropout,
                           block_size=CONFIG.block_size, attention="window", positional="none")  # peaky_model's
    warning = check_forward(model, section)
    assert warning.startswith(f"the logits of {CONFIG.block_size} tokens fed through a key/value cache (as "
                              f"{CONFIG.block_size - 2}, then one at a time) differ"), warning
    assert not model.supports_kv_cache
    (cached, _), (recomputed, _) = (run(model, 5, None, use_cache) for use_cache in (True, False))
    assert torch.equal(cached, recomputed)


def test_text_loss_predicts_every_character_but_the_first_once():
    import torch.nn.functional as F

    from gptkit import text_loss
    from gptkit.data.vocab import Vocab

    vocab = Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)])
    model = peaky_model().train()
    T = CONFIG.block_size
    text = "".join(chr(65 + (i * 7) % CONFIG.vocab_size) for i in range(2 * T + 4))  # 2 windows, then 3 more
    ids = vocab.encode(text)
    with torch.no_grad():
        model.eval()
        windows = [model(ids[s : s + T][None], ids[s + 1 : s + T + 1][None])[1] * T for s in (0, T)]
        tail = model(ids[T + 3 : 2 * T + 3][None])[0][0, -3:]  # the last 3, with a whole block of context
        expected = (sum(windows) + F.cross_entropy(tail, ids[2 * T + 1 :], reduction="sum")) / (2 * T + 3)
        model.train()
    assert text_loss(model, vocab, text) == pytest.approx(expected.item(), rel=1e-5)
    assert text_loss(model, vocab, text, batch_size=1) == pytest.approx(expected.item(), rel=1e-5)
    assert model.training  # left as it was
    short = text[:5]  # shorter than a window: the tail alone
    with torch.no_grad():
        assert text_loss(model, vocab, short) == pytest.approx(model.eval()(ids[:4][None], ids[1:5][None])[1].item(),
                                                               rel=1e-5)
    with pytest.raises(ValueError, match=r"^text must hold at least 2 characters \(the first is context only\), got 1"):
        text_loss(model, vocab, "A")
    with pytest.raises(ValueError, match=r"^batch_size must be a whole number >= 1, got 0"):
        text_loss(model, vocab, text, batch_size=0)
    with pytest.raises(UserError, match=r"^characters not in the vocabulary: 'z'"):
        text_loss(model, vocab, "ABz")
