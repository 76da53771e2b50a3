"""The CUDA paths: bf16 autocast, torch.compile, fused AdamW, CUDA-event timing, resuming, sampling
and the benchmark on a GPU. Skipped without one; tests/bench/gpu_figures.sh runs them on a GPU machine."""

import itertools
import json
import re

import pytest
import torch

from conftest import stop_at
from gptkit import load_recipe, train
from gptkit.bench import run_bench
from gptkit.components.optimizer import AdamWParams, adamw
from gptkit.conformance import CONFIG, tiny_model
from gptkit.errors import Interrupted
from gptkit.registry import registry
from gptkit.sampling import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU = {"device": "cuda", "epochs": 2, "max_steps": 60, "lr": 3e-3, "log_every": 10}  # the test text: 36 steps an epoch
PAIRS = list(itertools.product(registry("attention").names(), registry("positional").names()))


def losses(run) -> list[float]:
    records = (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines())
    return [r["train_loss"] for r in records if "train_loss" in r]


def test_a_gpu_run_uses_bf16_compile_and_cuda_events_and_learns(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(train=GPU), "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    bf16 = torch.cuda.get_device_capability() >= (8, 0)  # `precision: auto`: bf16 where it is native
    setup = r"\(bf16 autocast, torch\.compile\)" if bf16 else r"\(fp32, torch\.compile\)"
    assert re.search(r"parameters on cuda(:0)? " + setup, result.output), result.output
    assert "(CUDA events)" in result.output and "warning" not in result.output  # neither compile nor cache failed
    (run,) = runs.iterdir()
    trained = losses(run)
    assert trained[0] > 2.5 and trained[-1] < trained[0] - 1.0
    state = torch.load(run / "checkpoint.pt", weights_only=True, map_location="cpu")
    assert all(t.dtype == torch.float32 for t in state["model"].values())  # autocast keeps fp32 weights


def test_adamw_is_fused_on_the_gpu_and_steps_as_the_unfused_one_does():
    start, grad = torch.randn(8, 8, device="cuda"), torch.randn(8, 8, device="cuda")
    stepped = []
    for fused in (None, False):  # None: fused wherever torch supports it
        weight = torch.nn.Parameter(start.clone())
        weight.grad = grad.clone()
        optimizer = adamw([{"params": [weight], "weight_decay": 0.1}], 1e-2, AdamWParams(fused=fused))
        assert optimizer.fused is (fused is None)
        optimizer.step()
        stepped.append(weight.detach())
    assert not torch.equal(stepped[0], start)
    torch.testing.assert_close(*stepped)


def test_a_stopped_gpu_run_resumes_where_it_stopped(tmp_path, write_recipe, monkeypatch):
    # Compiled kernels and atomics in attention's backward need not repeat bit for bit on a GPU, as they
    # do on a CPU (test_reliability): the resumed steps agree to rounding.
    path = write_recipe(train={**GPU, "max_steps": 12, "log_every": 1, "compile": False})
    ref = train(load_recipe(path), runs_dir=tmp_path / "reference", quiet=True).run_dir
    with monkeypatch.context() as m:
        stop_at(m, "train_step", 6)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    resumed = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=e.value.run_dir)
    assert resumed.summary["status"] == "finished" and resumed.summary["steps"] == 12
    assert losses(resumed.run_dir) == pytest.approx(losses(ref), rel=2e-2)


@pytest.mark.parametrize("attention,positional", PAIRS, ids=[f"{a}-{p}" for a, p in PAIRS])
def test_cached_and_recomputed_generation_give_the_same_tokens_on_the_gpu(attention, positional):
    torch.manual_seed(0)
    model = tiny_model(attention=attention, positional=positional).cuda().eval()
    prompt = torch.randint(0, CONFIG.vocab_size, (2, 5), device="cuda")
    cached, recomputed = (generate(model, prompt, 2 * CONFIG.block_size, top_k=None, use_cache=use_cache,
                                   generator=torch.Generator("cuda").manual_seed(2)) for use_cache in (True, False))
    assert cached.device.type == "cuda" and torch.equal(cached, recomputed)


POSITIONALS = registry("positional").names()


@pytest.mark.parametrize("positional", POSITIONALS)
def test_flash_attention_matches_naive_under_bf16_autocast(positional):
    """The conformance check compares attentions in fp32 only; under autocast the fused kernel takes its
    mask, score bias included, in bf16 while naive adds the bias in fp32: both must stay near fp32 (on a
    CPU under bf16 autocast both are within 0.4% of the largest logit)."""
    from gptkit.conformance import tokens

    models = {}
    for name in ("naive", "flash"):
        torch.manual_seed(0)  # the same weights for both
        models[name] = tiny_model(attention=name, positional=positional).cuda().eval()
    idx = tokens(CONFIG).cuda()
    with torch.no_grad():
        reference = models["naive"](idx)[0].float()
        scale = reference.abs().max()
        for name, model in models.items():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(idx)[0].float()
            torch.testing.assert_close(logits, reference, atol=float(2e-2 * scale), rtol=0, msg=lambda m: f"{name}: {m}")


def test_sample_command_runs_a_cpu_checkpoint_on_the_gpu(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(), "--runs-dir", runs, "-q").exit_code == 0  # trained on the CPU
    (run,) = runs.iterdir()
    result = cli("sample", run, "--device", "cuda", "--tokens", "50", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("KING:") and len(result.stdout) >= len("KING:") + 50


def test_bench_on_the_gpu_measures_against_the_gpus_matmul_peak(write_recipe):
    report = run_bench(write_recipe(train={"device": "cuda"}), steps=2, warmup=1, rounds=2, log=lambda line: None)
    assert report["device"].startswith("cuda") and report["threads"] is None
    dtype = "bfloat16" if torch.cuda.get_device_capability() >= (8, 0) else "float32"
    assert f"{dtype} 8192x8192 matmul on" in report["peak_source"] and report["peak_flops"] > 1e12
    assert report["memory_kind"] == "CUDA max allocated"
    (variant,) = report["variants"]
    assert variant["compiled"] and 0 < variant["mfu"] < 1 and 0 < variant["peak_memory"] < 2**30
