"""The built-in learning-rate schedules: the linear warm-up the README documents; the cosine one peaks
right after warm-up and ends exactly at min_factor on the last step. (Every registered schedule's factors
are checked by the conformance checks.)"""

import json
import math

import pytest
import torch

from gptkit.recipe.components import parse_component


def build(name: str, total_steps: int, **params):
    return parse_component("schedule", {"name": name, **params}).build(total_steps)


@pytest.mark.parametrize("name", ["constant", "cosine"])
@pytest.mark.parametrize("total,warmup", [(1, 0), (2, 0), (10, 3), (100, 10), (5, 8)])
def test_a_built_in_schedule_starts_with_its_linear_warmup(name, total, warmup):
    s = build(name, total, warmup_steps=warmup)
    for step in range(min(warmup, total)):
        assert s.factor(step) == pytest.approx((step + 1) / warmup)
    if warmup < total:
        assert s.factor(warmup) == 1.0


@pytest.mark.parametrize("total,warmup", [(2, 0), (10, 0), (10, 3), (1500, 100)])
def test_cosine_peaks_after_warmup_and_ends_at_min_factor(total, warmup):
    s = build("cosine", total, warmup_steps=warmup, min_factor=0.1)
    assert s.factor(warmup) == 1.0
    assert s.factor(total - 1) == pytest.approx(0.1)
    decay = [s.factor(step) for step in range(warmup, total)]
    assert decay == sorted(decay, reverse=True)


def test_a_one_step_cosine_run_trains_at_the_full_rate():
    assert build("cosine", 1).factor(0) == 1.0


@pytest.mark.parametrize("value", [-0.5, float("nan"), None])
def test_a_schedule_factor_no_rate_can_be_made_of_is_the_schedules_error(temporary_component, write_recipe, cli,
                                                                         tmp_path, value):
    from gptkit.components.schedule import Schedule

    class Broken(Schedule):
        def factor(self, step):
            return value if step == 2 else 1.0

    temporary_component("schedule", "broken", Broken)
    result = cli("run", write_recipe(train={"schedule": "broken"}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and f"schedule 'broken' from test is broken: factor(2) returned {value!r}" in result.output, result.output


def test_a_tensor_factor_is_told_to_be_a_python_number(temporary_component, write_recipe, cli, tmp_path):
    """tensor(1.) is finite and >= 0: what is wrong is its type (taking a GPU tensor's value every step
    would wait for the GPU)."""
    from gptkit.components.schedule import Schedule

    class Torchy(Schedule):
        def factor(self, step):
            return torch.tensor(1.0)

    temporary_component("schedule", "torchy", Torchy)
    result = cli("run", write_recipe(train={"schedule": "torchy"}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "schedule 'torchy' from test is broken: factor(0) returned tensor(1.); a " \
        "schedule's factor must be a Python number (a float), not a torch.Tensor: return its .item()" in result.output
    assert "finite number" not in result.output, result.output


def test_a_factor_of_any_real_number_type_is_taken_as_a_float(temporary_component, write_recipe, cli, tmp_path):
    """numpy's float32, say (here a Fraction, which needs no numpy): a finite number >= 0 all the same."""
    from fractions import Fraction

    from gptkit.components.schedule import Schedule

    class Halved(Schedule):
        def factor(self, step):
            return Fraction(1, 2)

    temporary_component("schedule", "halved", Halved)
    assert cli("check", "schedule", "halved").exit_code == 0
    result = cli("run", write_recipe(train={"schedule": "halved", "lr": 0.002}), "--runs-dir", tmp_path / "runs", "-q")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    lrs = [json.loads(line).get("lr") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {type(lr) for lr in lrs if lr is not None} == {float} and 0.001 in lrs
    torch.load(run / "checkpoint.pt", weights_only=True)  # no Fraction in the optimizer's state


def test_each_step_trains_at_train_lr_times_its_schedule_factor(write_recipe, tmp_path):
    from gptkit import load_recipe, train

    schedule = {"name": "cosine", "warmup_steps": 3, "min_factor": 0.1}
    path = write_recipe(train={"lr": 0.01, "max_steps": 6, "log_every": 1, "schedule": schedule})
    result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}  # steps are numbered from 1: step s is factor(s - 1)
    warmup = [1 / 3, 2 / 3, 3 / 3]  # (k + 1) / warmup_steps
    decay = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 1 / 2, 1)]  # over steps 3 to 5 = total - 1
    assert lrs == pytest.approx({s: 0.01 * f for s, f in enumerate(warmup + decay, start=1)})


def test_the_warning_of_a_schedule_that_never_reaches_its_peak_counts_one_step_as_one():
    from gptkit.training.trainer import schedule_warning

    spec = parse_component("schedule", {"name": "cosine", "warmup_steps": 10})
    assert schedule_warning(spec, spec.build(1).factor, 1) == ("train.schedule (cosine) never reaches train.lr in 1 "
                                                                "step (at most 10% of it): its warmup_steps (10) is "
                                                                "longer than the run")
