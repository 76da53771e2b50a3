"""Learning-rate schedules: every registered one gives finite factors >= 0 (the contract allows
above 1) and, where it has `warmup_steps`, starts with that linear warm-up; the cosine one peaks
right after warm-up and ends exactly at min_factor on the last step."""

import math

import pytest

from gptkit.registry import registry

SCHEDULES = registry("schedule")


def build(name: str, total_steps: int, **params):
    cls = SCHEDULES.get(name)
    return cls(cls.Params(**params), total_steps=total_steps)


@pytest.mark.parametrize("name", SCHEDULES.names())
@pytest.mark.parametrize("total,warmup", [(1, 0), (2, 0), (10, 3), (100, 10), (5, 8)])
def test_every_schedule_gives_finite_factors_after_its_linear_warmup(name, total, warmup):
    has_warmup = "warmup_steps" in SCHEDULES.get(name).Params.model_fields
    s = build(name, total, **({"warmup_steps": warmup} if has_warmup else {}))
    factors = [s.factor(step) for step in range(total)]
    assert all(0 <= f < math.inf for f in factors), factors  # NaN fails both comparisons
    if has_warmup:
        for step in range(min(warmup, total)):
            assert factors[step] == pytest.approx((step + 1) / warmup)


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
    assert result.exit_code == 2 and f"schedule 'broken' (test) gave factor(2) = {value!r}" in result.output, result.output
