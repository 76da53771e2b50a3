"""Micro-batches and torch.compile change how a step runs, never what it computes."""

import warnings
from pathlib import Path

import pytest
import torch

from gptkit.recipe import load_recipe
from gptkit.training.speed import micro_batch_size
from conftest import gradients_and_loss, trainer_for


@pytest.mark.parametrize("batch, micro, rows", [(8, 1, 1), (8, 3, 2), (8, 4, 4),  # 3 is rounded down to a divisor of 8
                                                (7, 5, 5)])  # uneven: 5 rows, then 2, weighted by their rows
def test_micro_batches_give_the_whole_batchs_loss_and_gradients(write_recipe, batch, micro, rows):
    path = write_recipe(train={"batch_size": batch})
    whole, starts = trainer_for(path, "train.micro_batch_size=null")
    split, _ = trainer_for(path, f"train.micro_batch_size={micro}")
    assert split.micro_batch == rows and whole.micro_batch == batch
    g_whole, loss_whole = gradients_and_loss(whole, starts)
    g_split, loss_split = gradients_and_loss(split, starts)
    assert float(loss_split) == pytest.approx(float(loss_whole), rel=1e-5)
    for a, b in zip(g_whole, g_split, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_auto_micro_batch_divides_the_batch_on_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert micro_batch_size("auto", 128, 256, cpu) == 16  # 16 x 256 = 4,096 tokens
    assert micro_batch_size("auto", 100, 256, cpu) == 10  # the largest divisor within 16 rows
    assert micro_batch_size("auto", 128, 256, cuda) == 128
    assert micro_batch_size(None, 128, 256, cpu) == 128
    assert micro_batch_size(500, 128, 256, cpu) == 128
    assert micro_batch_size(6, 16, 256, cpu) == 4  # equal micro-batches: an uneven last one would recompile
    assert micro_batch_size(64, 127, 256, cpu) == 64  # a prime batch: two passes, not 127 of one row


def test_micro_batch_size_is_validated(cli, write_recipe):
    result = cli("validate", write_recipe(), "--set", "train.micro_batch_size=0")
    assert result.exit_code == 2 and "train.micro_batch_size" in result.output


def test_compile_option_wraps_the_model_and_shares_its_weights(write_recipe):
    trainer, _ = trainer_for(write_recipe(), "train.compile=true")
    assert isinstance(trainer.train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.train_forward._orig_mod is trainer.model
    eager, _ = trainer_for(write_recipe(), "train.compile=auto")  # auto: CUDA only
    assert eager.train_forward is eager.model


def test_compile_modes_reach_torch_compile(write_recipe, cli, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    trainer_for(write_recipe(), "train.compile=max-autotune-no-cudagraphs")
    trainer_for(write_recipe(), "train.compile=true")
    assert modes == ["max-autotune-no-cudagraphs", None]
    for wrong in ("fastest", "1"):  # 1 is not true: only true/false are booleans in a recipe
        result = cli("validate", write_recipe(), "--set", f"train.compile={wrong}")
        assert result.exit_code == 2 and "train.compile" in result.output and "max-autotune" in result.output


def no_compiler(graph, example_inputs):  # fails as inductor does without a C++ compiler
    from torch._inductor.exc import InductorError

    raise InductorError(RuntimeError("InvalidCxxCompiler: no working C++ compiler"), None)


def backward_without_compiler():
    """A backend whose forward compiles and whose backward, compiled lazily at the first backward
    pass, fails: the failure comes from loss.backward(), after the forward has run."""
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(fw_compiler=lambda graph, example_inputs: graph, bw_compiler=no_compiler)


def fails_on_the_second_compile():
    """A backend that compiles the first micro-batch and fails to recompile for the last one, of
    another size: by then the first micro-batch's gradients are in .grad."""
    calls = []

    def backend(graph, example_inputs):
        calls.append(graph)
        return graph.forward if len(calls) == 1 else no_compiler(graph, example_inputs)

    return backend


@pytest.mark.parametrize("backend, batch, micro", [(lambda: no_compiler, 8, 4), (backward_without_compiler, 8, 4),
                                                   (fails_on_the_second_compile, 7, 5)],
                         ids=["forward", "backward", "last-micro-batch"])
def test_a_failed_compilation_falls_back_to_the_same_eager_step(write_recipe, backend, batch, micro):
    from gptkit import GptkitWarning

    path = write_recipe(train={"batch_size": batch, "micro_batch_size": micro})  # 7 in 5: micro-batches of 5 and 2
    torch._dynamo.reset()  # shapes seen by earlier tests would make the first compile dynamic: no recompile
    eager, starts = trainer_for(path, "train.compile=false")
    failing, _ = trainer_for(path, "train.compile=true")
    failing.train_forward = torch.compile(failing.model, backend=backend())
    g_eager, loss_eager = gradients_and_loss(eager, starts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g_failing, loss_failing = gradients_and_loss(failing, starts)
    said = [str(w.message) for w in caught if issubclass(w.category, GptkitWarning)]
    assert len(said) == 1 and said[0].startswith(
        "train.compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: no working C++ compiler)"), said
    assert failing.train_forward is failing.model and float(loss_failing) == float(loss_eager)
    for a, b in zip(g_eager, g_failing, strict=True):  # nothing of the failed attempt is left in them
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_step_through_dynamo_matches_eager(write_recipe, monkeypatch):
    """The trainer's compiled path (graph capture, AOT autograd, micro-batches through the compiled model)
    in the default suite: the slow test below adds inductor's generated kernels."""
    compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compile(model, backend="aot_eager"))
    test_compiled_step_matches_eager(write_recipe)


@pytest.mark.slow
def test_compiled_step_matches_eager(write_recipe):
    path = write_recipe(train={"batch_size": 8})
    eager, starts = trainer_for(path, "train.compile=false", "train.micro_batch_size=4")
    fast, _ = trainer_for(path, "train.compile=true", "train.micro_batch_size=4")
    g_eager, loss_eager = gradients_and_loss(eager, starts)
    g_fast, loss_fast = gradients_and_loss(fast, starts)
    assert fast.is_compiled  # and did not fall back to eager
    assert float(loss_fast) == pytest.approx(float(loss_eager), rel=1e-4)
    for a, b in zip(g_eager, g_fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-5)


FAST = Path(__file__).parents[1] / "recipes/tinyshakespeare-fast.yaml"


def test_fast_recipe_validates():
    recipe = load_recipe(FAST)
    assert recipe.train.batch_size % recipe.train.micro_batch_size == 0
    assert recipe.data.val_fraction == 0.1  # nanoGPT's split


@pytest.mark.slow
@pytest.mark.skipif(not load_recipe(FAST).data.path.exists(), reason="tiny Shakespeare is not in ../shared/data")
def test_fast_recipe_trains_to_a_low_validation_loss(tmp_path):
    from gptkit.training import train

    result = train(load_recipe(FAST), runs_dir=tmp_path, quiet=True)
    assert result.summary["final_val_loss"] <= 1.70  # the loss-per-minute goal (1.665 measured)


def test_gradients_stay_in_one_buffer_and_are_zeroed_in_place(write_recipe):
    trainer, starts = trainer_for(write_recipe(train={"batch_size": 8, "micro_batch_size": 4}))
    params = list(trainer.model.parameters())
    storages = {p.grad.untyped_storage().data_ptr() for p in params}
    assert len(storages) == 1  # one flat buffer, allocated before the first step
    for batch in range(2):
        trainer.train_step(starts, batch, 1e-3)
        assert {p.grad.untyped_storage().data_ptr() for p in params} == storages
        assert all(not p.grad.any() for p in params)
