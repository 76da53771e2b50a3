"""`gptkit bench`: variants measured side by side, as a table or as JSON."""

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptkit.bench import BenchIncomplete, format_report, notes, parse_vary, peak, run_bench, variants
from gptkit.errors import ComponentError, Interrupted, OutOfMemory, UserError
from gptkit.recipe import load_recipe
from conftest import breaks_after

SHORT_CORPUS = """
from gptkit.components import register
from gptkit.components.corpus import Corpus

@register("corpus", "short")
class Short(Corpus):
    def text(self):
        return "KING: hail.\\n" * 300
"""

EXPLODES = """
from gptkit.components import register
from gptkit.components.feedforward import MLP

@register("feedforward", "explodes")
class Explodes(MLP):
    def forward(self, x):
        raise RuntimeError("boom")
"""


NAN_FROM_STEP_3 = """
import torch
from gptkit.components import register
from gptkit.components.feedforward import MLP

@register("feedforward", "nan_from_step_3")
class NanFromStep3(MLP):
    calls = 0

    def forward(self, x):
        self.calls += self.training and torch.is_grad_enabled()  # the checks before training have no gradients
        return super().forward(x) * (float("nan") if self.calls >= 3 else 1.0)
"""


def test_bench_json_reports_every_variant_against_the_first(cli, write_recipe):
    result = cli("bench", write_recipe(), "--vary", "model.attention=flash,naive", "--steps", "1",
                 "--warmup", "1", "--rounds", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["device"] == "cpu" and report["peak_flops"] > 0 and "matmul" in report["peak_source"]
    assert "12 * n_layer * n_embd * block_size" in report["flops_formula"]
    first, second = report["variants"]
    assert (first["label"], second["label"]) == ("model.attention=flash", "model.attention=naive")
    assert first["ratio"] == 1.0 and second["ratio"] == pytest.approx(second["tokens_per_s"] / first["tokens_per_s"])
    for v in report["variants"]:
        assert len(v["round_ms"]) == 2 and v["ms_per_step"] > 0
        assert v["tokens_per_s"] == pytest.approx(8 * 32 / (v["ms_per_step"] / 1000))  # batch 8 x block 32
        assert v["flops_per_s"] == pytest.approx(v["flops_per_token"] * v["tokens_per_s"])
        # (not mfu < 1: a peak measured while a neighbour slowed the machine can put a step above it)
        assert v["mfu"] == pytest.approx(v["flops_per_s"] / report["peak_flops"]) and v["mfu"] > 0
        assert v["peak_memory"] > 10 * 2**20  # a whole process: torch alone is more
    table = format_report(report)
    assert "model.attention=naive" in table and "tokens/s" in table and "MFU" in table
    assert report["notes"] == notes(report) and all(note in table for note in report["notes"])  # --json has them too
    assert first["round_ratios"] == [1.0, 1.0] and second["round_ratios"] == pytest.approx(
        [f / s for f, s in zip(first["round_ms"], second["round_ms"])])  # each round's own (same tokens per step)
    lo, hi = min(second["round_ratios"]), max(second["round_ratios"])
    assert re.search(rf"^model\.attention=naive .* {second['ratio']:.2f}x +{lo:.2f}-{hi:.2f}x ", table, re.M), table


def test_rounds_that_disagree_are_said_to():
    from gptkit.bench import DRIFT

    variant = dict(label="v", ms_per_step=100, tokens_per_s=2560, ratio=1.0, round_ratios=[1.0, 1.0, 1.0],
                   peak_memory=2**28, flops_per_token=10**6, flops_per_s=1e9, mfu=0.5, warmup_seconds=1.0,
                   tokens_per_step=256, micro_batch_size=8, compiled=False, failed=None)
    report = dict(device="cpu", threads=2, peaks=[{"flops": 1e11, "source": "x"}], flops_formula="f", warmup_steps=1,
                  rounds=3, steps_per_round=1, memory_kind="peak RSS",
                  variants=[variant, {**variant, "label": "w", "ratio": 0.89, "round_ratios": [0.3, 0.89, 1.2]}])
    table = format_report(report)
    assert re.search(r"^w .* 0\.89x +0\.30-1\.20x ", table, re.M) and "per round" in table, table
    assert table.splitlines()[-1].startswith(f"note: a variant's ratio differs by more than {DRIFT - 1:.0%} from round "
                                             "to round"), table
    steady = {**report, "variants": [variant, {**variant, "label": "w", "round_ratios": [0.9, 0.95, 1.0]}]}
    assert "note:" not in format_report(steady)
    single = {**report, "rounds": 1, "variants": [variant, {**variant, "label": "w", "round_ratios": [0.5]}]}
    assert "per round" not in format_report(single)  # one round: nothing to range over
    past_peak = {**report, "variants": [variant, {**variant, "label": "w", "round_ratios": [0.9, 0.95, 1.0],
                                                  "mfu": 1.48}]}
    assert notes(past_peak) == ["note: an MFU above 100%: the machine was slower while its peak was measured, before "
                                "the variants ran and after, than while they ran (other programs, a busy host); the "
                                "ratios stand, the MFU does not: measure again on a quieter machine"]
    assert format_report(past_peak).endswith(notes(past_peak)[0]) and notes(steady) == []


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_flops_per_token_is_six_per_matmul_weight_plus_the_attention_scores(tie):
    """PaLM's estimate (README, "Performance"). The token embedding is a lookup, not a matmul: tied or
    not, only the LM head's V x C weights count."""
    from gptkit.conformance import CONFIG, tiny_model

    model = tiny_model(feedforward="mlp", tie_embeddings=tie)
    V, T, L, C = CONFIG.vocab_size, CONFIG.block_size, CONFIG.n_layer, CONFIG.n_embd
    per_layer = C * 3 * C + C * C + C * 4 * C + 4 * C * C  # qkv, attention out, MLP in, MLP out
    assert model.flops_per_token() == 6 * (L * per_layer + V * C) + 12 * L * C * T


@pytest.mark.parametrize("args, message", [
    (["--vary", "model.attention=flash,flsh"], "--vary model.attention=flsh: model.attention: unknown attention "
                                               "'flsh' (did you mean 'flash'?)"),
    (["--vary", "model.atention=flash"], "--vary model.atention=flash: model.atention: unknown key "
                                         "(did you mean 'attention'?)"),
    (["--vary", "train.batch_size=8,x"], "--vary train.batch_size=x: train.batch_size: Input should be a valid integer"),
    (["--vary", "model.attention=[flash"], "--vary model.attention=[flash: not valid YAML"),
    (["--vary", "model.attention=flash,naive", "--vary", "model.attention=flash"], "--vary model.attention is given "
                                                                                    "twice; list all its values in one --vary"),
    (["--warmup", "0"], "Invalid value for '--warmup'"),  # a compile's fallback to eager would be timed
    (["--vary", "model.attention=flash,naive,flash"], "--vary model.attention: flash is given twice; give each value once"),
    (["--vary", "model.norm=rmsnorm,{name: rmsnorm}"], "--vary model.norm=rmsnorm and model.norm={name: rmsnorm} give "
                                                       "the same recipe; give each value once"),
])
def test_bench_rejects_a_bad_variant_before_any_work(cli, write_recipe, args, message):
    result = cli("bench", write_recipe(), *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert "--set" not in result.output


def test_vary_makes_every_combination_with_the_first_values_as_baseline():
    axes = parse_vary(["model.positional={name: rope, base: 500},sinusoidal", "train.batch_size=8,16"])
    assert axes[0] == ("model.positional", ["{name: rope, base: 500}", "sinusoidal"])
    labels = [v.label for v in variants(axes)]
    assert labels[0] == "model.positional={name: rope, base: 500} train.batch_size=8" and len(labels) == 4
    with pytest.raises(UserError, match="KEY=VALUE1,VALUE2"):
        parse_vary(["model.attention"])


def test_vary_is_split_as_ablate_splits_it(cli, write_recipe):
    from gptkit.recipe.vary import parse_vary as ablate_parse_vary

    texts = ['sample.prompt="a,b",c', "model.positional={name: rope, base: 500},'x,y'", "train.lr=1e-3, 2e-3"]
    assert parse_vary(texts)[0] == ("sample.prompt", ['"a,b"', "c"])
    assert parse_vary(texts) == list(ablate_parse_vary(texts).items())
    result = cli("bench", write_recipe(), "--vary", "model.positional={name: rope, base: 500},sinusoidal", "--vary",
                 "train.batch_size=8,x")
    assert result.exit_code == 2 and "--vary train.batch_size=x: train.batch_size" in result.output  # the mapping read
    result = cli("bench", write_recipe(), "--vary", 'sample.prompt="a,b",c')  # split, then refused: not timed
    assert result.exit_code == 2 and result.output.startswith("error: --vary sample.prompt: a benchmark times training "
                                                              "steps, which sample.prompt does not change"), result.output


def test_bench_reports_a_batch_too_large_for_the_data(cli, write_recipe):
    result = cli("bench", write_recipe(), "--set", "train.batch_size=100000", "--steps", "1", "--rounds", "1")
    assert result.exit_code == 2 and "error: --set train.batch_size=100000: train.batch_size 100000" in result.output, \
        result.output  # no "variant baseline: "


@pytest.mark.parametrize("args, message", [
    (["--vary", "train.batch_size=4,4000"], "error: variant train.batch_size=4000: train.batch_size 4000 is larger than"),
    (["--set", "data.path=absent.txt", "--vary", "train.batch_size=4,8"], "error: variant train.batch_size=4: --set "
                                                                          "data.path=absent.txt: data.path: file "),
    # each variant would set the key after the --set: it would count for nothing
    (["--set", "model.attention=naive", "--vary", "model.attention=flash,naive"],
     "error: --set model.attention=naive: --vary model.attention gives that key its value in every variant; drop the "
     "--set, or give its value among the --vary's\n"),
])
def test_every_variants_data_is_checked_before_any_work(cli, write_recipe, args, message):
    result = cli("bench", write_recipe(sample={"prompt": "no such characters: #%&"}), *args)  # nothing is sampled
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Peak" not in result.output and "warmed up" not in result.output


def test_a_corpus_that_makes_too_little_data_is_found_out_before_any_work(cli, write_recipe, tmp_path,
                                                                          scratch_registries):
    (tmp_path / "short.py").write_text(SHORT_CORPUS)
    path = write_recipe(imports=["short.py"], data={"path": str(tmp_path / "made.txt"), "corpus": "short"})
    result = cli("bench", path, "--vary", "train.batch_size=8,100000")
    assert result.exit_code == 2 and "Peak" not in result.output, result.output
    assert "error: variant train.batch_size=100000: train.batch_size 100000 is larger than" in result.output
    assert (tmp_path / "made.txt").read_text() == "KING: hail.\n" * 300  # as the first worker would have made it


def test_each_variant_reports_its_own_peak_memory(write_recipe):
    ballast = torch.ones(2**28)  # 1 GiB in the parent, which a worker's peak must not inherit
    report = run_bench(write_recipe(), steps=1, warmup=1, rounds=1, log=lambda *a: None)
    del ballast
    assert 10 * 2**20 < report["variants"][0]["peak_memory"] < 2**30


@pytest.mark.parametrize("as_json", [False, True])
def test_a_failing_variant_is_named_and_the_others_are_measured(cli, write_recipe, tmp_path, scratch_registries,
                                                                as_json):
    (tmp_path / "explodes.py").write_text(EXPLODES)
    result = cli("bench", write_recipe(imports=["explodes.py"]), "--vary", "model.feedforward=explodes,mlp,swiglu",
                 "--steps", "1", "--warmup", "1", "--rounds", "2", *(["--json"] if as_json else []))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output  # as `gptkit run` reports it
    failure = (f"feedforward 'explodes' from {tmp_path / 'explodes.py'} is broken: its forward() raised "
               f"RuntimeError: boom (at {tmp_path / 'explodes.py'}:8)")
    assert result.stderr.endswith(f"error: variant model.feedforward=explodes: {failure}\n"), result.stderr
    if as_json:
        explodes, mlp, swiglu = json.loads(result.stdout)["variants"]
        assert explodes["failed"] == failure and explodes["ratio"] == 0 and mlp["failed"] is None
        assert len(mlp["round_ms"]) == 2
        assert mlp["ratio"] == 1.0 and swiglu["ratio"] > 0  # to the first measured
    else:
        rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("model.feedforward=")}
        assert rows["model.feedforward=explodes"].split(None, 1)[1] == f"failed: {failure}"
        assert "1.00x" in rows["model.feedforward=mlp"] and "ms/step" in result.stdout
        assert "(ratios to model.feedforward=mlp: the first variant failed)" in result.stdout


def test_a_bench_whose_every_variant_fails_reports_each_failure(write_recipe, cli, tmp_path, scratch_registries):
    (tmp_path / "explodes.py").write_text(EXPLODES)
    recipe = write_recipe(imports=["explodes.py"], model={"feedforward": "explodes"})
    with pytest.raises(BenchIncomplete) as e:
        run_bench(recipe, steps=1, warmup=1, rounds=1, log=lambda *a: None)
    (error,) = e.value.errors
    assert isinstance(error, UserError) and re.match("^feedforward 'explodes' from .* is broken: its forward", str(error))
    # --json prints the report all the same, every variant in it failed, as when some were measured
    result = cli("bench", recipe, "--vary", "model.norm=rmsnorm,layernorm", "--steps", "1", "--warmup", "1",
                 "--rounds", "2", "--json")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [v["failed"].split(":")[0] for v in json.loads(result.stdout)["variants"]] == \
        [f"feedforward 'explodes' from {tmp_path / 'explodes.py'} is broken"] * 2
    assert result.stderr.endswith("error: variant model.norm=rmsnorm: " + e.value.errors[0].args[0] + "\n")
    result = cli("bench", recipe, "--vary", "model.norm=rmsnorm,layernorm", "--steps", "1", "--warmup", "1")
    assert result.exit_code == 2 and result.stdout.count("failed: ") == 2 and "ms/step" not in result.stdout, \
        result.stdout  # each said as it failed; no table of nothing measured


def test_a_component_failing_in_a_bench_names_the_step_it_failed_at(write_recipe, temporary_component):
    from gptkit.bench.worker import Bench

    temporary_component("feedforward", "breaks", breaks_after(3, how="raise"))
    bench = Bench(load_recipe(write_recipe(model={"feedforward": "breaks"})).to_dict())
    bench.steps(2)  # warm-up, say: the step count goes on from it
    assert bench.diverged_at is None
    with pytest.raises(ComponentError, match="its forward\\(\\) raised, in training step 4, ValueError"):
        bench.steps(5)


def test_a_variant_that_diverges_is_measured_with_a_note(cli, write_recipe, tmp_path, scratch_registries):
    (tmp_path / "nan.py").write_text(NAN_FROM_STEP_3)
    result = cli("bench", write_recipe(imports=["nan.py"], model={"feedforward": "nan_from_step_3"}), "--steps", "2",
                 "--warmup", "1", "--rounds", "2", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (variant,) = report["variants"]
    assert variant["diverged_at"] == 3 and variant["ms_per_step"] > 0  # warm-up step 1, then rounds of steps 2-3, 4-5
    assert report["notes"] == ["note: the loss was not finite from step 3 on: it diverged (a benchmark trains at "
                               "train.lr from its first step, without the schedule's warm-up), and its figures time "
                               "steps of NaN or inf, which a run stops at; lower train.lr with --set"]
    two = {**report, "variants": [{**variant, "label": "a", "diverged_at": None}, {**variant, "label": "b"}]}
    assert notes(two) == [report["notes"][0].replace("the loss", "variant b's loss")]
    del two["notes"]  # (made by format_report)
    assert format_report(two).endswith(notes(two)[0])


def test_a_bench_that_runs_out_of_memory_says_what_the_settings_ask(write_recipe, temporary_component):
    from gptkit.bench.worker import Bench

    temporary_component("feedforward", "hungry", breaks_after(3, how="oom"))
    bench = Bench(load_recipe(write_recipe(model={"feedforward": "hungry"})).to_dict())
    with pytest.raises(OutOfMemory, match=r"^out of memory on cpu at step 4: micro-batches of 8 rows of 32 tokens need "
                                          r"more than it has; lower train.micro_batch_size, model.block_size or the "
                                          r"model's size$"):
        bench.steps(5)


def test_a_cpu_peak_shrinks_its_matmul_to_the_time_budget(monkeypatch):
    monkeypatch.setattr(peak, "CPU_SECONDS_PER_MATMUL", 1e-9)  # a dtype as slow as can be
    assert peak.cpu_size(torch.float32, 1536) == 256
    monkeypatch.setattr(peak, "CPU_SECONDS_PER_MATMUL", 1e9)
    assert peak.cpu_size(torch.float32, 1536) == 1536


def test_each_variant_is_measured_against_the_peak_of_its_own_dtype(write_recipe, monkeypatch):
    # Not measured: a CPU without native bf16 emulates it, for seconds.
    monkeypatch.setattr("gptkit.bench.matmul_peak", lambda device, dtype: (
        {torch.float32: 2e9, torch.bfloat16: 5e9}[dtype], f"measured: {str(dtype).removeprefix('torch.')} matmul"))
    threads = torch.get_num_threads()
    report = run_bench(write_recipe(), vary=["train.precision=fp32,bf16"], steps=1, warmup=1, rounds=1,
                       threads=1, log=lambda line: None)
    assert torch.get_num_threads() == threads  # the caller's setting is left as it was
    assert [p["source"].split()[1] for p in report["peaks"]] == ["float32", "bfloat16"]
    for v, measured in zip(report["variants"], report["peaks"]):
        assert v["peak_flops"] == measured["flops"] and v["mfu"] == pytest.approx(v["flops_per_s"] / measured["flops"])
    assert "tokens/step 256, 256;" in format_report(report)


def test_a_peak_measured_slow_once_is_measured_again_after_the_variants(write_recipe, monkeypatch):
    measured = iter([(1e9, "measured: slowed by a neighbour"), (4e9, "measured: later")])
    monkeypatch.setattr("gptkit.bench.matmul_peak", lambda device, dtype: next(measured))
    lines = []
    report = run_bench(write_recipe(), steps=1, warmup=1, rounds=1, threads=1, log=lines.append)
    assert report["peak_flops"] == 4e9 and report["peaks"] == [{"flops": 4e9, "source": report["peak_source"]}]
    assert report["peak_source"] == "measured: later, before the variants ran and after, the faster"
    v = report["variants"][0]
    assert v["peak_flops"] == 4e9 and v["mfu"] == pytest.approx(v["flops_per_s"] / 4e9)
    assert lines[0].startswith("Peak 1.0 GFLOP/s") and any(line.startswith("Peak again 4.0 GFLOP/s") for line in lines)


@pytest.mark.parametrize("kwargs, error", [({"steps": 0}, ValueError), ({"rounds": 0}, ValueError),
                                           ({"threads": 0}, ValueError), ({"threads": -1}, ValueError),
                                           ({"threads": 2.5}, ValueError), ({"steps": True}, ValueError),
                                           ({"vary": "model.norm=layernorm"}, TypeError)])
def test_run_bench_checks_its_arguments(write_recipe, kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=f"^{name} " if error is ValueError else None):  # torch's own error did not name it
        run_bench(write_recipe(), **kwargs)


@pytest.mark.parametrize("flags,named", [(["--vary", "train.device=cpu,cuda"], "--vary train.device=cuda"),
                                         (["--set", "train.device=cuda"], "--set train.device=cuda")])
def test_a_missing_device_is_named_by_its_flag_before_the_peak(cli, write_recipe, flags, named, no_gpu):
    result = cli("bench", write_recipe(), *flags, "--steps", "1", "--warmup", "1", "--rounds", "1")
    assert result.exit_code == 2 and "Peak" not in result.output, result.output
    assert result.output.startswith(f"error: {named}: train.device: cuda was asked for"), result.output


# Run at the interpreter's start in every bench worker (and nowhere else): it writes its pid, then lingers
# as a slow import would, so that a signal meets a worker that has not reached worker.main yet.
SLOW_START = """
import os, sys, time
if "--multiprocessing-fork" in sys.orig_argv:
    with open(os.environ["WORKER_PID"] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(os.environ["WORKER_PID"] + ".tmp", os.environ["WORKER_PID"])
    time.sleep(2)  # the test signals as soon as the pid is written
"""


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="POSIX signals")
@pytest.mark.parametrize("sig, whom, code, last_line", [
    (signal.SIGINT, "group", 130, "interrupted"),  # Ctrl-C: the terminal signals the whole process group
    (signal.SIGINT, "worker", 0, "(tokens/step 256; micro-batch 8)"),  # the parent's to handle: ignored
    (signal.SIGTERM, "parent", 143, "stopped: SIGTERM received while benchmarking"),
    (signal.SIGKILL, "parent", -9, None),  # the worker must go quietly of itself
])
def test_a_signal_while_a_worker_starts_ends_all_quietly(write_recipe, tmp_path, sig, whom, code, last_line):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SLOW_START)
    worker_pid = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(Path(__file__).parents[1])]),
           "WORKER_PID": str(worker_pid)}
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "bench", write_recipe(), "--steps", "1", "--rounds", "1",
                             "--warmup", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        while not worker_pid.exists():
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.05)
        if whom == "group":
            os.killpg(proc.pid, sig)
        else:
            os.kill(int(worker_pid.read_text()) if whom == "worker" else proc.pid, sig)
        out, _ = proc.communicate(timeout=120)  # its end of stdout closed: the parent and its workers, all ended
    finally:
        proc.kill()
    assert proc.returncode == code and "Traceback" not in out and "Error" not in out, out
    if last_line:
        assert out.rstrip().splitlines()[-1] == last_line, out


NO_COMPILER = """
import multiprocessing

import torch
from torch._inductor.exc import InductorError


def no_compiler(graph, example_inputs):  # fails as inductor does without a C++ compiler
    raise InductorError(RuntimeError("InvalidCxxCompiler: no working C++ compiler"), None)


if multiprocessing.parent_process() is not None:  # a bench worker, not the test's own process
    compile = torch.compile
    torch.compile = lambda model, mode=None: compile(model, backend=no_compiler)
"""


def test_a_variant_whose_compilation_fails_is_measured_eager_and_says_so(cli, write_recipe, tmp_path):
    (tmp_path / "no_compiler.py").write_text(NO_COMPILER)  # imported by the workers, which compile
    result = cli("bench", write_recipe(imports=["no_compiler.py"]), "--vary", "train.compile=true,false",
                 "--steps", "1", "--warmup", "1", "--rounds", "1", "--json")
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "warning" in line]  # (--json: the progress is there too)
    assert said == ["warning: variant train.compile=true: train.compile: torch.compile failed (RuntimeError: "
                    "InvalidCxxCompiler: no working C++ compiler); training without it. Set train.compile=false to "
                    "skip compiling"], result.stderr
    assert [v["compiled"] for v in json.loads(result.stdout)["variants"]] == [False, False]


@pytest.mark.parametrize("vary, said", [
    (["seed=1,2"], "error: --vary seed: a benchmark times training steps, which seed does not change (nor name, "
                   "sample.*, train.lr, train.schedule, "),
    (["train.max_steps=10,20"], "error: --vary train.max_steps: a benchmark times training steps, which "),
    (["train.micro_batch_size=2,3"], "error: --vary train.micro_batch_size=2 and train.micro_batch_size=3 time the "
                                     "same steps here (device \"cpu\", micro_batch_size 2, precision \"fp32\", compile "
                                     "false); give values that differ here"),
    (["train.device=cpu,auto"], "error: --vary train.device=cpu and train.device=auto time the same steps here"),
    (["train.compile=false,auto"], "error: --vary train.compile=false and train.compile=auto time the same steps"),
    (["train.precision=auto,fp32"], "error: --vary train.precision=auto and train.precision=fp32 time the same steps"),
    (["train.lr=1e-3,2e-3"], "error: --vary train.lr: a benchmark times training steps, which train.lr does not "),
])
def test_variants_that_would_time_the_same_steps_are_refused(cli, write_recipe, no_gpu, vary, said):
    result = cli("bench", write_recipe(), *[a for v in vary for a in ("--vary", v)])
    assert result.exit_code == 2 and result.output.startswith(said) and "Peak" not in result.output, result.output


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("stop, code, last_line", [
    (KeyboardInterrupt, 130, "interrupted"),
    (lambda: Interrupted(signal.SIGTERM, "SIGTERM received while benchmarking"), 143,
     "stopped: SIGTERM received while benchmarking")])
def test_an_interrupted_bench_reports_its_whole_rounds(cli, write_recipe, monkeypatch, as_json, stop, code, last_line):
    """Stopped in its third round, a benchmark of 4 shows the first two, then ends as a stopped one does."""
    import gptkit.bench

    runs, ask = [], gptkit.bench.ask

    def stopped_in_round_3(conn, message, *args):
        if message[0] == "run":
            runs.append(message)
            if len(runs) == 6:  # round 3, the second variant's turn
                raise stop()
        return ask(conn, message, *args)

    monkeypatch.setattr(gptkit.bench, "ask", stopped_in_round_3)
    result = cli("bench", write_recipe(), "--vary", "model.norm=rmsnorm,layernorm", "--steps", "1", "--warmup", "1",
                 "--rounds", "4", *(["--json"] if as_json else []))
    assert result.exit_code == code and result.output.rstrip().splitlines()[-1] == last_line, result.output
    if as_json:
        report = json.loads(result.stdout)
        assert report["rounds"] == 2 and [len(v["round_ms"]) for v in report["variants"]] == [2, 2]
        assert [v["peak_memory"] for v in report["variants"]] == [None, None]
        assert report["notes"][-1] == ("note: interrupted after 2 rounds of 4: the figures are of those; peak memory "
                                       "was not measured")
    else:
        rows = [line for line in result.stdout.splitlines() if line.startswith("model.norm=")]
        assert len(rows) == 2 and "1.00x" in rows[0] and "MiB" not in result.stdout, result.stdout
        assert "2 interleaved rounds of 1 step; medians\n" in result.stdout  # no memory to name
        assert result.stdout.rstrip().endswith("note: interrupted after 2 rounds of 4: the figures are of those; peak "
                                               "memory was not measured")
