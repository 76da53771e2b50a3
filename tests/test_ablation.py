"""Ablations: arm expansion, fairness checks, the statistics, the table against the runs' own
summary.json files, resuming after an interruption, and `gptkit compare`."""

import csv
import errno
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import statistics
import warnings
from pathlib import Path

import pytest
import yaml

from gptkit.ablation import report
from gptkit.ablation.runner import ablation_dir
from gptkit.ablation.spec import FILE_KEYS, Ablation, canonical, load_ablation, parse_seeds, plan
from gptkit.recipe.vary import split_values
from gptkit.errors import Interrupted, UserError
from conftest import breaks_after

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_tables(df, expected):
    assert report.t_quantile(0.975, df) == pytest.approx(expected, abs=2e-4)


def test_mean_ci():
    mean, half = report.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3027 * 1.0 / math.sqrt(3), abs=1e-3)
    assert report.mean_ci([5.0]) == (5.0, None) and report.mean_ci([]) == (None, None)


def test_split_values_keeps_flow_mappings_whole():
    assert split_values("rope, {name: alibi, x: [1, 2]},'a,b'") == ["rope", "{name: alibi, x: [1, 2]}", "'a,b'"]


@pytest.mark.parametrize("text, values", [
    ("it's,b", ["it's", "b"]),  # a quote inside a plain value opens nothing
    ("'it''s, x',b", ["'it''s, x'", "b"]),  # '' is a quote inside single quotes
    (r'"a\",b",c', [r'"a\",b"', "c"]),  # \" inside double quotes
    ("{name: 'a}b', x: 1},c", ["{name: 'a}b', x: 1}", "c"]),
    ('[ "x,y" ], z', ['[ "x,y" ]', "z"]),
])
def test_split_values_reads_quotes_as_yaml_does(text, values):
    assert split_values(text) == values


def test_grid_and_one_at_a_time(write_recipe):
    path = write_recipe(model={"positional": "sinusoidal", "norm": "rmsnorm"})
    vary = {"model.positional": ["sinusoidal", "rope", "alibi"], "model.norm": ["rmsnorm", "layernorm"]}
    grid = plan(Ablation(recipe=path, vary=vary, seeds=2))
    # the recipe's own values are a grid cell, so it is the baseline, not a seventh arm
    assert len(grid.arms) == 6 and grid.baseline.label == "positional=sinusoidal norm=rmsnorm"
    assert grid.seeds == [0, 1] and len({a.slug for a in grid.arms}) == 6
    one = plan(Ablation(recipe=path, vary=vary, mode="one-at-a-time", seeds=[5, 7]))
    assert [a.label for a in one.arms] == ["baseline", "positional=rope", "positional=alibi", "norm=layernorm"]
    assert one.arms[1].for_seed(7).seed == 7 and one.arms[1].recipe.model.positional.name == "rope"
    assert one.digest != grid.digest and one.digest == plan(Ablation(recipe=path, vary=vary, mode="one-at-a-time")).digest
    # every arm's value of every varied key (results.csv's columns): the baseline recipe's where it changes none
    assert [a.factors for a in one.arms] == [
        {"model.positional": p, "model.norm": n} for p, n in
        [("sinusoidal", "rmsnorm"), ("rope", "rmsnorm"), ("alibi", "rmsnorm"), ("sinusoidal", "layernorm")]]
    assert {tuple(a.factors.values()) for a in grid.arms} == {(p, n) for p in vary["model.positional"]
                                                              for n in vary["model.norm"]}


def test_folder_names_read_as_the_changes(write_recipe):
    path = write_recipe(model={"positional": "sinusoidal", "norm": "rmsnorm"})
    vary = {"model.positional": ["sinusoidal", "{name: rope, base: 500}"], "model.norm": ["rmsnorm", "layernorm"]}
    slugs = [a.slug for a in plan(Ablation(recipe=path, vary=vary)).arms[1:]]
    assert slugs == ["norm-layernorm_positional-sinusoidal", "norm-rmsnorm_positional-name-rope-base-500.0",
                     "norm-layernorm_positional-name-rope-base-500.0"]


@pytest.mark.parametrize("key, spellings", [
    ("train.grad_clip", ["2", "2.0", "2e0"]),
    ("model.positional", ["{name: rope, base: 500}", "{base: 500, name: rope}", "{name: rope, base: 500.0}"]),
])
def test_a_value_spelled_otherwise_names_the_same_arm_folder(write_recipe, key, spellings):
    """The ablation folder's hash is of the recipes, the arm folders' names too: a rerun spelling a value
    otherwise resumes it rather than finding arms it does not have."""
    plans = [plan(Ablation(recipe=write_recipe(), vary={key: [v]})) for v in spellings]
    assert len({p.digest for p in plans}) == 1 and len({p.arms[1].slug for p in plans}) == 1, \
        [p.arms[1].slug for p in plans]


def test_a_hashed_arm_folder_does_not_depend_on_what_a_rerun_may_change(write_recipe):
    vary = {"train.schedule": ["{name: cosine, warmup_steps: 5, min_factor: 0.2}"],
            "model.positional": ["{name: rope, base: 500}"], "train.weight_decay": ["0.05"]}
    plans = [plan(Ablation(recipe=write_recipe(), vary=vary, overrides=sets))
             for sets in ([], ["train.micro_batch_size=4"], ["sample.tokens=5"])]
    assert len(plans[0].arms[1].slug) <= 80 and len({p.arms[1].slug for p in plans}) == 1, \
        [p.arms[1].slug for p in plans]
    assert len({p.digest for p in plans}) == 1


def test_the_order_of_the_varied_keys_and_values_finds_the_same_folders(write_recipe):
    """Rerunning a command whose --vary flags come in another order resumes the same ablation."""
    path = write_recipe(model={"positional": "sinusoidal", "norm": "rmsnorm"})
    a = plan(Ablation(recipe=path, vary={"model.positional": ["sinusoidal", "rope"], "model.norm": ["rmsnorm", "layernorm"]}))
    b = plan(Ablation(recipe=path, vary={"model.norm": ["layernorm", "rmsnorm"], "model.positional": ["rope", "sinusoidal"]}))
    assert a.digest == b.digest
    assert {arm.slug: canonical(arm.recipe) for arm in a.arms} == {arm.slug: canonical(arm.recipe) for arm in b.arms}
    assert a.arms[1].label == "positional=sinusoidal norm=layernorm"  # labels keep the command's order
    assert b.arms[1].label == "norm=layernorm positional=rope"


def test_shipped_ablation_plans_over_the_four_kinds():
    p = plan(load_ablation(ROOT / "recipes" / "ablations" / "components-cpu.yaml"))
    kinds = {key.split("=")[0] for a in p.arms for key in a.label.split()} - {"baseline"}
    assert kinds == {"attention", "feedforward", "norm", "positional"} and len(p.seeds) == 3


@pytest.mark.parametrize("args, message", [
    (["--vary", "train.max_steps=2,4"], "changes the token budget"),
    (["--vary", "data.max_lines=10,20"], "changes the text and split"),
    (["--vary", "seed=1,2"], "seeds are set with --seeds"),
    (["--vary", "model.positional"], "expected KEY=VALUE,VALUE"),
    (["--vary", "model.positional=rope", "--vary", "model.positional=alibi"], "given twice"),
    (["--vary", "model.positional=rpoe"], "arm positional=rpoe: --vary model.positional=rpoe: model.positional: "
                                          "unknown positional 'rpoe' (did you mean 'rope'?)"),
    (["--vary", "model.positional=[rope"], "arm positional=[rope: --vary model.positional=[rope: not valid YAML"),
    (["--vary", "model.norm=yes"], "arm norm=yes: --vary model.norm=yes: model.norm: unknown norm 'yes'"),  # as given
    (["--vary", "model.positionl=rope"], "did you mean 'positional'?"),
    (["--seeds", "x"], "--seeds x: expected a count"),
    (["--vary", "model.norm=layernorm", "--seeds=-1,0,18446744073709551615"],
     "--seeds: seeds -1 and 18446744073709551615 are one seed to torch, which takes them "
     "modulo 2**64; give seeds that differ"),
    (["--vary", "model.norm=layernorm", "--set", "data.val_fraction=0"], "an ablation compares validation losses"),
    (["--vary", "model.norm=layernorm", "--set", "data.val_fraction=1e-9"], "validation split has 0 characters"),
    (["--vary", "model.norm=layernorm", "--seeds", "1,99999999999999999999999"], "seed 99999999999999999999999 is out"),
    (["--vary", "model.norm=layernorm", "--seeds", "100000000000"], "100,000,000,000 seeds per arm; at most 1,000; "
     "for the one seed 100000000000, give a list of one (100000000000, on the command line, [100000000000] in a file)"),
    (["--vary", "model=rope,alibi"], "arm model=rope: --vary model=rope: model is a section of keys (n_embd, "),
    (["--vary", "model=rope,alibi"], "not one value; set one of them, e.g. --vary model.positional=alibi\n"),
    (["--seeds", "1,,2"], "--seeds 1,,2: expected a count (--seeds 3) or a list (--seeds 0,1,2; one seed: --seeds 7,)"),
    (["--vary", "model.norm=layernorm", "--set", "seed=18446744073709551615"],
     "the seeds from the recipe's seed 18446744073709551615 on run past 18446744073709551615"),
    ([], "nothing is varied, so the baseline is the only arm and there is nothing to compare it with; vary a "
         "field to values other than the recipe's, e.g. --vary model.norm=rmsnorm,layernorm"),
    (["--vary", "model.norm=rmsnorm", "--vary", "model.positional=sinusoidal"],
     "every value given for model.norm, model.positional is the recipe's own, so the baseline is the only arm"),
])
def test_bad_ablations_are_one_clear_error(cli, tmp_path, write_recipe, args, message):
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "abl").exists()


def test_a_bare_component_name_that_keeps_the_recipes_parameters_is_said(cli, tmp_path, write_recipe):
    """{name: rope, base: 500} in the recipe: `rope` is that, not rope at its defaults, and is no new arm."""
    recipe = write_recipe(model={"positional": {"name": "rope", "base": 500.0}})
    note = ("model.positional=rope keeps the baseline's {base: 500.0}; model.positional={name: rope} is rope with its "
            "defaults")
    p = plan(Ablation(recipe=recipe, vary={"model.positional": ["sinusoidal", "rope", "{name: rope}"]}))
    # labels write each arm's component as its recipe holds it: the kept parameter shows
    assert [a.title for a in p.arms] == ["positional={name: rope, base: 500.0} (baseline)", "positional=sinusoidal",
                                         "positional=rope"]
    assert p.notes == [note]
    named = plan(Ablation(recipe=recipe, vary={"model.positional.name": ["rope", "alibi"]}))
    assert named.notes == [note.replace("model.positional=rope", "model.positional.name=rope", 1)]
    # not where a --set gives it to every arm, nor where the baseline's component is another
    assert plan(Ablation(recipe=recipe, vary={"model.positional": ["rope"], "model.norm": ["layernorm"]},
                         overrides=["model.positional.base=700"])).notes == []
    result = cli("ablate", recipe, "--out", tmp_path / "abl", "--vary", "model.positional=rope")
    assert result.exit_code == 2 and "the only arm and there is nothing to compare it with" in result.output
    assert f"\n({note})" in result.output, result.output
    assert plan(Ablation(recipe=recipe, vary={"model.positional": ["rope"],  # another varied key gives them
                                              "model.positional.base": ["100", "1000"]})).notes == []
    assert plan(Ablation(recipe=write_recipe(), vary={"model.positional": ["rope", "alibi"]})).notes == []  # defaults
    assert plan(Ablation(recipe=write_recipe(), vary={"sample.temperature": ["0.5", "1.0"]})).notes == [
        "sample.temperature does not change training: its arms train alike, and differ only in their final sample "
        "(gptkit sample RUN_DIR samples any run with other settings)"]


def test_one_seed_is_a_list_of_one():
    assert parse_seeds("1338,") == [1338] and parse_seeds("1338") == 1338 and parse_seeds("0,5") == [0, 5]


def test_every_arms_mistake_is_said_in_one_error(cli, tmp_path, write_recipe):
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", "--vary", "model.positional=rope,rpoe,[rope",
                 "--vary", "model.n_head=4,3")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.output.splitlines()
    # each mistake once, after the arms it is about
    assert lines[0] == "error: the ablation has 3 problems:", result.output
    assert lines[1].startswith("  arm positional=rope n_head=3: --vary model.n_head=3: model.n_head: n_embd 32 is not "
                               "divisible by n_head 3"), result.output
    assert lines[2].startswith("  arms positional=rpoe n_head=4, positional=rpoe n_head=3: --vary model.positional=rpoe: "
                               "model.positional: unknown positional 'rpoe' (did you mean 'rope'?)"), result.output
    assert lines[3].startswith("  arms positional=[rope n_head=4, positional=[rope n_head=3: --vary "
                               "model.positional=[rope: not valid YAML"), result.output
    assert len(lines) == 4
    assert not (tmp_path / "abl").exists()


def test_every_arm_that_cannot_be_built_is_named_before_any_trains(cli, tmp_path, write_recipe, temporary_component):
    from gptkit.components.norm import RMSNorm

    class Unbuildable(RMSNorm):
        def __init__(self, config, params):
            raise RuntimeError("no weights today")

    temporary_component("norm", "unbuildable", Unbuildable)
    temporary_component("norm", "unbuildable2", Unbuildable)
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", "--vary", "model.norm=unbuildable,unbuildable2")
    assert result.exit_code == 2 and result.output.startswith("error: the ablation has 2 problems:\n"), result.output
    for name in ("unbuildable", "unbuildable2"):
        assert f"  arm norm={name}: norm '{name}' from test is broken: building it raised RuntimeError: no weights " \
               f"today (at " in result.output, result.output
    assert not (tmp_path / "abl").exists()


@pytest.mark.parametrize("args,named", [
    (["--vary", "model.norm=rmsnorm,layernorm", "--set", "train.device=cuda"], "--set train.device=cuda"),  # said once
    (["--vary", "train.device=cpu,cuda"], "arm device=cuda: --vary train.device=cuda"),
])
def test_a_missing_device_is_named_by_its_flag_before_any_arm_trains(cli, tmp_path, write_recipe, args, named):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", *args)
    assert result.exit_code == 2 and f"error: {named}: train.device: cuda was asked for" in result.output, result.output
    assert not (tmp_path / "abl").exists() and "Ablation folder" not in result.output  # nothing to resume


def test_ablate_refuses_to_run_under_torchrun(cli, tmp_path, write_recipe, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # every process would train, and write, every arm
    for k, v in dict(RANK="0", MASTER_ADDR="localhost", MASTER_PORT="29500").items():
        monkeypatch.setenv(k, v)
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", "--vary", "model.norm=rmsnorm,layernorm")
    assert result.exit_code == 2 and result.output == (
        "error: gptkit ablate runs in one process; run it without torchrun (`gptkit run` alone trains on several: "
        "torchrun ... -m gptkit run RECIPE)\n")
    assert not (tmp_path / "abl").exists()


def test_a_stopped_ablation_says_to_rerun_the_ablation(cli, tmp_path, write_recipe, monkeypatch):
    import gptkit.ablation.runner as runner

    def stopped(*args, run_dir, **kwargs):  # SIGTERM during the first run, after its checkpoint
        Path(run_dir).mkdir(parents=True)
        (Path(run_dir) / "checkpoint.pt").write_bytes(b"")
        e = Interrupted(signal.SIGTERM, "SIGTERM received; stopped after saving a checkpoint")
        e.run_dir = Path(run_dir)
        raise e

    monkeypatch.setattr(runner, "train", stopped)
    result = cli("ablate", write_recipe(), "--vary", "model.norm=rmsnorm,layernorm", "--seeds", "1", "--out", tmp_path / "a")
    assert result.exit_code == 143 and "(continue: rerun the same gptkit ablate command)" in result.output
    assert "gptkit run --resume" not in result.output


@pytest.fixture
def ctrl_c():
    """SIGINT raising KeyboardInterrupt, as in a terminal (a background job's may be ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def reported(out: Path) -> tuple[int, int]:
    """(finished runs results.csv lists, finished runs results.md counts)."""
    with open(out / "results.csv", newline="") as f:
        rows = sum(r["status"] == "finished" for r in csv.DictReader(f))
    return rows, int(re.search(r"^(\d+) of \d+ runs finished", (out / "results.md").read_text(), re.M)[1])


@pytest.mark.parametrize("module, name, nth, made", [
    ("gptkit.ablation.runner", "continue_from", 2, 2),  # between the two runs
    ("gptkit.ablation.runner", "markdown", 2, 2),  # rendering the reports of both runs
    # writing results.csv after the second run (after baseline.yaml, ablation.yaml and the first reports): its
    # results.md is written too before the Ctrl-C takes effect
    ("gptkit.ablation.runner", "write_text", 5, 6),
    ("gptkit.cli.ablate", "plot", 1, 1),  # drawing the curves
])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_outside_a_runs_training_says_to_rerun_and_keeps_the_reports_in_step(cli, tmp_path, write_recipe,
                                                                                    monkeypatch, ctrl_c, module,
                                                                                    name, nth, made, signum):
    import importlib

    real, calls = getattr(importlib.import_module(module), name), []

    def pressed(*a, **k):  # the signal at the nth call
        calls.append(a)
        if len(calls) == nth:
            signal.raise_signal(signum)
        return real(*a, **k)

    out = tmp_path / "abl"
    args = ("ablate", write_recipe(train={"max_steps": 2}), "--vary", "model.norm=layernorm", "--seeds", "1",
            "--out", out)
    with monkeypatch.context() as m:
        m.setattr(f"{module}.{name}", pressed)
        result = cli(*args)
    assert result.exit_code == 128 + signum and len(calls) == made, result.output
    assert result.output.endswith(f"\nstopped: {signal.Signals(signum).name} received while running the ablation\n"
                                  f"Ablation folder: {out}  (continue: rerun the same gptkit ablate command)\n"), \
        result.output
    rows, said = reported(out)
    assert rows == said
    again = cli(*args)
    assert again.exit_code == 0 and reported(out) == (2, 2), again.output


def test_bad_ablation_file(cli, tmp_path, write_recipe):
    path = tmp_path / "abl.yaml"
    path.write_text(f"recipe: {write_recipe().name}\nvary: {{model.norm: [layernorm]}}\nseed: 3\n")
    result = cli("ablate", path)
    assert result.exit_code == 2 and "seed: unknown key (did you mean 'seeds'?)" in result.output


def test_a_vary_the_command_line_replaces_is_named_as_the_command_lines(cli, tmp_path, write_recipe):
    path = tmp_path / "u.yaml"
    path.write_text(f"recipe: {write_recipe().name}\nvary: {{train.max_steps: [10, 30]}}\n")
    result = cli("ablate", path, "--vary", "train.max_steps=5,7")
    assert result.exit_code == 2 and result.output.startswith("error: --vary train.max_steps changes the token "
                                                              "budget"), result.output
    result = cli("ablate", path)  # the file's own
    assert result.exit_code == 2 and result.output.startswith(f"error: {path}:2: vary.train.max_steps changes"), \
        result.output


@pytest.mark.parametrize("key, value, expected", [
    ("recipe", "5", "the base recipe's path, relative to this file"),
    ("name", "5", "a folder name, for the ablation's folder"),
    ("param_margin", "x", "a fraction such as 0.1 (arms whose parameter count differs from the baseline's by more are "
                          "flagged)"),
    ("allow_unfair", "5", "true or false (true allows varying data, budget or evaluation fields)"),
])
def test_a_value_of_the_wrong_type_in_an_ablation_file_is_one_problem(tmp_path, write_recipe, key, value, expected):
    path = tmp_path / "abl.yaml"
    given = {"recipe": write_recipe().name, key: value}
    path.write_text("vary: {model.norm: [layernorm]}\n" + "".join(f"{k}: {v}\n" for k, v in given.items()))
    with pytest.raises(UserError) as e:
        load_ablation(path)
    got = 5 if value == "5" else repr(value)
    assert str(e.value) == f"{path}:{2 + list(given).index(key)}: {key}: expected {expected}, got {got}"
    assert FILE_KEYS[key] == expected


def test_an_ablation_files_problems_are_said_together(cli, tmp_path, write_recipe):
    path = tmp_path / "abl.yaml"
    path.write_text(f"recipe: {write_recipe().name}\nvary: {{model.norm: layernorm, model.positional: [rope]}}\n"
                    "seed: 3\nmode: one-at-a-tim\nname: a/b\n")
    result = cli("ablate", path)
    assert result.exit_code == 2 and result.output == (
        f"error: {path} has 4 problems:\n"
        f"  {path}:2: vary.model.norm: expected a list of values, e.g. [sinusoidal, rope]\n"
        f"  {path}:3: seed: unknown key (did you mean 'seeds'?). Valid keys: {', '.join(sorted(FILE_KEYS))}\n"
        f"  {path}:4: mode: expected one of grid, one-at-a-time, got 'one-at-a-tim'\n"
        f"  {path}:5: name: 'a/b' cannot name the ablation folder: use letters, digits, '.', '_' and '-', starting "
        "with a letter or digit, at most 100 characters (e.g. norm-sweep)\n"), result.output


@pytest.mark.parametrize("lines, args, message", [
    ("name: ../../evil", [], "abl.yaml:3: name: '../../evil' cannot name the ablation folder"),
    ("", ["--name", "a/b"], "--name: 'a/b' cannot name the ablation folder"),
    ("param_margin: -0.5", [], "abl.yaml:3: param_margin: expected a fraction of at least 0"),
    ("seeds: 0", [], "abl.yaml:3: seeds: expected a count of at least 1 (3: the recipe's seed and the next two) or a list"),
    ("seeds: [1, 1]", [], "abl.yaml:3: seeds: expected at least one seed, each once"),
    ("", ["--seeds", "0"], "error: --seeds: expected a count of at least 1"),
    ("", ["--seeds", "-1"], "error: --seeds: expected a count of at least 1 (3: the recipe's seed and the next two) or a list of seeds (0,1,2); got -1"),
    ("set: {model.nrm: rmsnorm}", [], "abl.yaml:3: set.model.nrm: model.nrm: unknown key (did you mean 'norm'?)"),
    ("vary: {model.nrm: [layernorm]}", [], "abl.yaml:2: vary.model.nrm: model.nrm: unknown key (did you mean 'norm'?)"),
    ("vary: {train.max_steps: [2, 4]}", [], "abl.yaml:2: vary.train.max_steps changes the token budget"),
    ("", ["--vary", "train.max_steps=2,4"], "error: --vary train.max_steps changes the token budget"),
])
def test_bad_ablation_file_names_its_key(cli, tmp_path, write_recipe, lines, args, message):
    path = tmp_path / "abl.yaml"
    vary = "" if lines.startswith("vary:") else "vary: {model.norm: [layernorm]}\n"
    path.write_text(f"recipe: {write_recipe().name}\n{vary}{lines}\n")
    before = set(tmp_path.rglob("*"))
    result = cli("ablate", path, "--runs-dir", tmp_path / "runs", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert set(tmp_path.rglob("*")) == before


def test_a_folder_holding_another_ablation_is_refused(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "model.norm=rmsnorm,layernorm", "--seeds", "1", "--out", out)
    assert first.exit_code == 0, first.output
    before = (out / "ablation.yaml").read_text()
    other = cli("ablate", recipe, "--vary", "model.feedforward=swiglu,mlp", "--seeds", "1", "--out", out)
    assert other.exit_code == 2 and other.output.endswith(
        f"error: {out} holds runs of arms this ablation does not have (norm-layernorm): they are another ablation's, "
        "or this one's from an older gptkit that named some arms' folders differently; pass --out with a new "
        "folder, or move those folders out of it\n")
    assert (out / "ablation.yaml").read_text() == before
    for arm in ("a", "b", "c"):  # more than are named: counted
        shutil.copytree(out / "norm-layernorm", out / f"norm-{arm}")
    other = cli("ablate", recipe, "--vary", "model.feedforward=swiglu,mlp", "--seeds", "1", "--out", out)
    assert "(norm-a, norm-b, norm-c and 1 more): they are" in other.output, other.output


def test_a_folder_that_is_not_an_ablations_is_refused(cli, tmp_path, write_recipe):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("ablate", write_recipe(), "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    assert result.exit_code == 2, result.output
    assert f"{out} is not empty and is not an ablation folder (it has no ablation.yaml)" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("args, message", [
    (["--vary", "train.batch_size=8,100000", "--allow-unfair"],
     "error: arm batch_size=100000: --vary train.batch_size=100000: train.batch_size 100000 is larger than the"),
    (["--vary", "model.norm=layernorm", "--set", "train.batch_size=100000"],
     "error: --set train.batch_size=100000: train.batch_size 100000 is larger"),
    (["--vary", "sample.prompt=KING,zzz"],
     "error: arm prompt=zzz: --vary sample.prompt=zzz: sample.prompt 'zzz': characters not in the vocabulary"),
    (["--vary", "model.norm=layernorm", "--set", "data.path=nope.txt"], "error: --set data.path=nope.txt: data.path: "),
    (["--vary", "data.val_fraction=0.1,0", "--allow-unfair"],  # a varied arm's too, not only the baseline's
     "error: arm val_fraction=0: data.val_fraction is 0: an ablation compares validation losses"),
    (["--set", "data.val_fraction=0"], "error: data.val_fraction is 0: an ablation compares validation losses"),
])
def test_every_arm_is_checked_against_its_data_before_any_trains(cli, tmp_path, write_recipe, args, message):
    result = cli("ablate", write_recipe(), "--seeds", "1", "--out", tmp_path / "abl", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "abl").exists()


def test_finished_runs_are_reused_only_on_the_text_they_trained_on(cli, tmp_path, write_recipe, corpus):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    assert cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out).exit_code == 0
    corpus.write_text(corpus.read_text().upper())  # the same file, another text: seeds must not mix texts
    result = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "2", "--out", out)
    assert result.exit_code == 2, result.output
    for run in ("baseline/seed-0", "norm-layernorm/seed-0"):  # each run is named, in one error
        assert f"\n  {run} was trained on another text than {corpus} now holds" in result.output, result.output
    assert "Delete them to train them again (rm -r " in result.output and not (out / "baseline" / "seed-1").exists()


def test_runs_trained_by_other_gptkit_code_or_torch_are_not_pooled(cli, tmp_path, write_recipe):
    import json

    from gptkit.plugins import software

    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    assert first.exit_code == 0, first.output
    run = out / "baseline" / "seed-0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["software"] == software() and summary["precision"] == "fp32"
    old = {**software(), "gptkit_sha256": "0123456789ab"}  # as before a git pull
    (run / "summary.json").write_text(json.dumps(summary | {"software": old}))
    compared = cli("compare", run, out / "norm-layernorm" / "seed-0").output
    assert f"| software        | gptkit {software()['gptkit']} (sha256 0123456789ab), torch" in compared, compared
    result = cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1")
    assert result.exit_code == 2 and (
        f"{run} was trained with other software than this (gptkit code sha256 0123456789ab, now "
        f"{software()['gptkit_sha256']}); seeds trained with different code are not pooled") in result.output, \
        result.output
    del summary["software"]  # a run from before gptkit recorded it: nothing can tell
    (run / "summary.json").write_text(json.dumps(summary))
    assert cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1").exit_code == 0


def test_runs_trained_in_other_arithmetic_are_not_pooled(cli, tmp_path, write_recipe):
    """train.device may differ between seeds, but precision auto is bf16 on a recent GPU and fp32 here: a
    seed trained there (or resumed there for a while: precision_history) is not averaged with these."""
    import json

    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    assert cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out).exit_code == 0
    run = out / "baseline" / "seed-0"
    summary = json.loads((run / "summary.json").read_text())
    for trained in ({"precision": "bf16 autocast"}, {"precision_history": ["bf16 autocast"]}):
        (run / "summary.json").write_text(json.dumps(summary | trained))
        result = cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1")
        assert result.exit_code == 2 and (
            f"{run} was trained in bf16 autocast arithmetic, and would be in fp32 on cpu (train.precision auto); "
            "seeds of different arithmetic are not pooled") in result.output, result.output
        assert not (out / "baseline" / "seed-1").exists()
    del summary["precision"]  # a run from before gptkit recorded it: nothing can tell
    (run / "summary.json").write_text(json.dumps(summary))
    assert cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1").exit_code == 0


def test_a_resumed_runs_summary_keeps_the_arithmetic_of_its_earlier_sessions():
    from gptkit.training.run import history

    assert history({"precision": "bf16 autocast"}, "precision", "fp32") == {"precision_history": ["bf16 autocast"]}
    assert history({"precision": "fp32"}, "precision", "fp32") == {}
    assert history({"precision": "fp32", "precision_history": ["bf16 autocast"]}, "precision", "fp32") == \
        {"precision_history": ["bf16 autocast"]}


def test_every_sessions_plugins_record_of_a_run_is_checked_before_it_is_pooled(tmp_path, write_recipe,
                                                                              scratch_registries):
    """A seed resumed by `gptkit run --resume` with another plugin version keeps the earlier record in
    plugins_history: the ablation refuses it as if that version had trained it all."""
    import json

    from gptkit.ablation.runner import Refused, check_same_plugins
    from gptkit.recipe import load_recipe
    from gptkit.training import run as run_module
    from gptkit.training.folder import summary_of

    (tmp_path / "mine.py").write_text("from gptkit.components import register\nfrom gptkit.components.norm import "
                                      "RMSNorm\n\n@register('norm', 'mynorm')\nclass MyNorm(RMSNorm):\n    pass\n")
    recipe = load_recipe(write_recipe(imports=["mine.py"], model={"norm": "mynorm"}))
    now, old = recipe.plugin_sources(), {"model.norm": "mynorm from /elsewhere/mine.py (sha256 0123456789ab)"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"plugins": old}))
    assert run_module.history(summary_of(run), "plugins", now) == {"plugins_history": [old]}  # as a resumed session
    # writes it
    (run / "summary.json").write_text(json.dumps({"plugins": now, "plugins_history": [old]}))
    with pytest.raises(Refused, match=r"was trained with other plugin versions or code .*model.norm \(mynorm\)"):
        check_same_plugins(run, recipe)


@pytest.mark.parametrize("finished", [True, False])
def test_runs_are_reused_or_resumed_only_with_the_plugin_versions_they_trained_with(cli, tmp_path, write_recipe,
                                                                                    install, finished):
    import json

    from test_plugins import NORM, upgrade

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_pooled:UnitNorm"}}, {"acme_pooled": NORM})
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)  # one arm uses it
    assert first.exit_code == 0, first.output
    run = out / "baseline" / "seed-0"
    if not finished:  # as if stopped after its checkpoint: resuming it would mix the two versions within one run
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps(summary | {"status": "interrupted", "resumable": True}))
    upgrade(install, tmp_path, "acme_pooled", "1.3")
    result = cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1")
    assert result.exit_code == 2, result.output
    assert (f"{run} was trained with other plugin versions or code than are installed now (model.norm "
            "(unitnorm) was trained with acme-norms 1.2 and now comes from acme-norms 1.3); seeds trained with "
            f"different code are not pooled: delete that run folder (rm -r {run}) to train it again, or pass --out "
            "with a new folder") in result.output
    assert not (out / "baseline" / "seed-1").exists()
    assert json.loads((run / "summary.json").read_text())["plugins"]["model.norm"].startswith(
        "unitnorm from acme-norms 1.2 (sha256 ")


def test_every_run_a_plugin_upgrade_refuses_is_named_in_one_error(cli, tmp_path, write_recipe, install, monkeypatch):
    import gptkit.ablation.runner as runner
    from test_plugins import NORM, upgrade

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_every:UnitNorm"}}, {"acme_every": NORM})
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "model.positional=rope", "--seeds", "2", "--out", out)
    assert first.exit_code == 0, first.output
    upgrade(install, tmp_path, "acme_every", "1.3")
    monkeypatch.setattr(runner, "SHOWN", 3)  # as if there were more runs than an error names
    result = cli("ablate", out / "ablation.yaml", "--out", out)
    assert result.exit_code == 2, result.output
    runs = sorted(p.parent for p in out.glob("*/seed-*/summary.json"))
    change = ("was trained with other plugin versions or code than are installed now (model.norm (unitnorm) was "
              "trained with acme-norms 1.2 and now comes from acme-norms 1.3)")
    assert len(runs) == 4 and result.output.splitlines()[-6:] == [
        f"error: 4 runs in {out} cannot be reused or resumed as they are:",
        *(f"  {run.relative_to(out)} {change}" for run in runs[:3]), "  and 1 more",
        f"Delete them to train them again (rm -r {' '.join(map(str, runs))}), or pass --out with a new folder"]


def test_runs_of_a_plugins_earlier_code_are_not_pooled_with_new_seeds(cli, tmp_path, write_recipe, install):
    from test_plugins import NORM, code_hash, edit

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_edited_abl:UnitNorm"}}, {"acme_edited_abl": NORM})
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)  # one arm uses it
    assert first.exit_code == 0, first.output
    before = code_hash("acme_edited_abl")
    edit(tmp_path, "acme_edited_abl")  # pip install -e: the same version, other code
    result = cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1")
    assert result.exit_code == 2, result.output
    assert (f"{out / 'baseline' / 'seed-0'} was trained with other plugin versions or code than are installed now "
            f"(model.norm (unitnorm) was trained with acme-norms 1.2, whose code (one hash of its package's files, or of its module's file) has changed since (sha256 {before} -> "
            f"{code_hash('acme_edited_abl')})); seeds trained with different code are not pooled") in result.output
    assert not (out / "baseline" / "seed-1").exists()


def test_settings_that_do_not_change_training_keep_finished_runs(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    assert cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out).exit_code == 0
    again = cli("ablate", out / "ablation.yaml", "--out", out, "--set", "sample.tokens=5",
                "--set", "train.checkpoint_every=1")
    assert again.exit_code == 0 and "2 of 2 runs finished earlier: skipping them" in again.output, again.output
    budget = cli("ablate", out / "ablation.yaml", "--out", out, "--set", "train.max_steps=3")  # not its figures
    assert budget.exit_code == 2 and "ended with a different recipe (train.max_steps differ)" in budget.output
    # final_train_loss is the mean of the last log_every steps: runs logged otherwise do not pool
    logged = cli("ablate", out / "ablation.yaml", "--out", out, "--set", "train.log_every=1")
    assert logged.exit_code == 2 and "ended with a different recipe (train.log_every differ)" in logged.output
    # one run refused: its fix alone, not also "continue: gptkit run --resume" of a run the ablation refuses
    one = next(out.glob("*/seed-0"))
    shutil.rmtree(next(p for p in out.glob("*/seed-0") if p != one))
    single = cli("ablate", out / "ablation.yaml", "--out", out, "--set", "train.log_every=1")
    assert single.exit_code == 2 and single.stderr.count("\n") == 1 and "--resume" not in single.output, single.output


def test_a_rerun_that_changes_only_what_runs_may_differ_in_goes_on_in_the_same_folder(cli, tmp_path, write_recipe):
    """Smaller micro-batches (after running out of memory, say) or another sample on the same command: the
    same ablation, and finished runs kept. A component spelled out with its defaults is the same arm."""
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    args = ["ablate", recipe, "--seeds", "1", "--runs-dir", tmp_path / "runs"]
    assert cli(*args, "--vary", "model.positional=rope").exit_code == 0
    again = cli(*args, "--vary", "model.positional={name: rope, base: 10000}", "--set", "train.micro_batch_size=4",
                "--set", "sample.tokens=5")
    assert again.exit_code == 0 and "2 of 2 runs finished earlier: skipping them" in again.output, again.output
    (folder,) = (tmp_path / "runs" / "ablations").iterdir()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["baseline", "positional-rope"]


def test_a_varied_setting_that_runs_may_differ_in_still_names_the_folder(write_recipe):
    path = write_recipe()
    a, b = (plan(Ablation(recipe=path, vary={"train.micro_batch_size": [v]})) for v in ("2", "4"))
    assert a.digest != b.digest and [x.slug for x in a.arms[1:]] == ["micro_batch_size-2"]
    # the others of its kind are still left out
    c, d = (plan(Ablation(recipe=path, vary={"sample.temperature": ["0.5"]}, overrides=o)) for o in ([], ["sample.tokens=5"]))
    assert c.digest == d.digest


def test_an_ablation_folder_named_by_an_older_gptkit_is_resumed_where_it_is(tmp_path, write_recipe):
    """Before its name left out what runs may differ in, it hashed the whole recipes."""
    p = plan(Ablation(recipe=write_recipe(), vary={"model.positional": ["rope"]}))
    whole = [canonical(p.arms[0].recipe), sorted(canonical(a.recipe) for a in p.arms[1:])]
    older = tmp_path / "ablations" / f"tiny-{hashlib.sha1(json.dumps(whole).encode()).hexdigest()[:8]}"
    assert ablation_dir(p, tmp_path) == tmp_path / "ablations" / f"tiny-{p.digest}" != older
    older.mkdir(parents=True)
    assert ablation_dir(p, tmp_path) == older
    (tmp_path / "ablations" / f"tiny-{p.digest}").mkdir()  # both: the newer is the one
    assert ablation_dir(p, tmp_path) == tmp_path / "ablations" / f"tiny-{p.digest}"


def test_the_written_ablation_file_resumes_from_anywhere(cli, tmp_path, write_recipe, monkeypatch):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    first = cli("ablate", recipe, "--vary", "train.lr=1e-3,3e-3", "--vary", "model.positional={name: rope, base: 500}",
                "--set", "sample.tokens=3", "--name", "1e5", "--seeds", "1", "--out", out)
    assert first.exit_code == 0, first.output
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    again = cli("ablate", out / "ablation.yaml", "--out", out)
    assert again.exit_code == 0 and "3 of 3 runs finished earlier: skipping them" in again.output, again.output
    manifest = yaml.safe_load((out / "ablation.yaml").read_text())
    assert manifest["name"] == "1e5" and manifest["set"] == {"sample.tokens": 3}


def test_a_component_bug_before_the_first_step_leaves_no_arm_folder(cli, tmp_path, write_recipe):
    (tmp_path / "mine.py").write_text(
        "from gptkit.components import Schedule, register\n\n"
        "@register('schedule', 'broken_at_0')\nclass Broken(Schedule):\n"
        "    def factor(self, step):\n        raise ValueError('no factor')\n")
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    result = cli("ablate", recipe, "--vary", "train.schedule=constant,broken_at_0", "--seeds", "1", "--out", out)
    assert result.exit_code == 2 and "schedule 'broken_at_0'" in result.output, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["baseline"]  # nothing of the broken arm


def test_an_ablations_file_keeps_its_overrides_in_order(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "train.lr=3e-4", "--set", "model.positional.base=500", "--set",
            "model.positional=rope", "--seeds", "1", "--out", out)  # in any order: rope at base 500
    assert cli(*args).exit_code == 0
    assert (out / "lr-0.0003" / "seed-0" / "summary.json").is_file()  # one spelling of a value names its folder
    written = yaml.safe_load((out / "ablation.yaml").read_text())["set"]
    assert list(written) == ["model.positional.base", "model.positional"]  # in the order given
    manifest = cli("ablate", out / "ablation.yaml", "--out", out)
    assert manifest.exit_code == 0 and "2 of 2 runs finished earlier" in manifest.output, manifest.output


def test_an_ablation_files_recipe_is_found_beside_it(cli, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "abl.yaml").write_text("vary: {model.norm: [layernorm]}\nrecipe: ../nope.yaml\n")
    monkeypatch.chdir(tmp_path / "sub")
    result = cli("ablate", "abl.yaml")
    assert result.exit_code == 2
    assert f"abl.yaml:2: recipe: recipe file {tmp_path / 'nope.yaml'} not found (recipe: is a path relative to the " \
        "ablation file)" in result.output


@pytest.mark.parametrize("recipe, said", [
    ("abl.yaml", "abl.yaml:1: recipe: names this ablation file itself; give the recipe it varies"),
    ("other.yaml", "abl.yaml:1: recipe: {tmp}/other.yaml is another ablation file, not a recipe; give the recipe it "
                   "varies"),
    (".", "abl.yaml:1: recipe: {tmp} is a folder; give the recipe file"),
])
def test_an_ablation_files_recipe_that_is_not_one_is_said_so(cli, tmp_path, monkeypatch, recipe, said):
    (tmp_path / "other.yaml").write_text("recipe: abl.yaml\nvary: {model.norm: [layernorm]}\n")
    (tmp_path / "abl.yaml").write_text(f"recipe: {recipe}\nvary: {{model.norm: [layernorm]}}\n")
    monkeypatch.chdir(tmp_path)
    result = cli("ablate", "abl.yaml")
    assert result.exit_code == 2 and result.output == f"error: {said.format(tmp=tmp_path)}\n", result.output


@pytest.mark.parametrize("entries, key", [
    ("set: {train: {lr: 0.1}}\nvary: {model.norm: [layernorm]}", "set.train"),
    ("vary: {train: [{lr: 0.1}, {lr: 0.2}]}", "vary.train"),
])
def test_a_whole_section_in_an_ablation_file_is_told_the_files_way(cli, tmp_path, write_recipe, entries, key):
    (tmp_path / "abl.yaml").write_text(f"recipe: {write_recipe().name}\n{entries}\n")
    result = cli("ablate", tmp_path / "abl.yaml")
    assert result.exit_code == 2 and result.output.endswith(  # said once, for every arm
        f"abl.yaml:2: {key}: replaces the whole train section, dropping the recipe's other train keys; set keys one by "
        "one, e.g. train.lr as the key\n"), result.output
    assert result.output.count("replaces") == 1


@pytest.mark.parametrize("value", ["the #cat", "the: cat", "null", "true", "1e-3", "[x]", "it's", "a\nb"])
def test_file_strings_reach_the_recipe_unchanged(tmp_path, write_recipe, value):
    path = tmp_path / "abl.yaml"
    for entry, arm in [({"set": {"sample.prompt": value}, "vary": {"model.norm": ["layernorm"]}}, 0),
                       ({"vary": {"sample.prompt": [value]}}, 1)]:
        path.write_text(json.dumps({"recipe": write_recipe().name, **entry}))  # JSON is YAML, and quotes every string
        assert plan(load_ablation(path)).arms[arm].recipe.sample.prompt == value


def md_rows(text: str) -> dict[str, list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")][1:]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))]
             for line in lines]  # a cell's own "|" is escaped
    # Keyed by label: "baseline (norm=rmsnorm)" (its values of what varies) as "baseline", "x (baseline)" as "x"
    return {re.sub(r"^baseline \(.*\)$", "baseline", c[0].removesuffix(" (baseline)")): c for c in cells}


def test_ablation_table_matches_the_run_summaries_and_resumes(cli, tmp_path, write_recipe, monkeypatch):
    recipe = write_recipe(train={"max_steps": 4, "eval_every": 2, "eval_batches": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.positional=sinusoidal,rope", "--seeds", "3", "--out", out)

    # interrupted during the fourth of six runs (Ctrl-C, as a user would)
    import gptkit.ablation.runner as runner
    real_train, calls = runner.train, []

    def train_then_interrupt(*a, **k):
        calls.append(k["run_dir"])
        if len(calls) == 4:
            Path(k["run_dir"]).mkdir(parents=True)
            (Path(k["run_dir"]) / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n')
            raise KeyboardInterrupt
        return real_train(*a, **k)

    monkeypatch.setattr(runner, "train", train_then_interrupt)
    first = cli(*args)
    assert first.exit_code == 130 and len(calls) == 4
    finished = {p.parent for p in out.glob("*/seed-*/summary.json")}
    assert len(finished) == 3 and Path(calls[3]) not in finished
    mtimes = {p: (p / "summary.json").stat().st_mtime_ns for p in finished}

    calls.clear()
    second = cli(*args)
    assert second.exit_code == 0, second.output
    assert "3 of 6 runs finished earlier: skipping them" in second.output
    assert len(calls) == 3 and not finished & {Path(c) for c in calls}
    assert all((p / "summary.json").stat().st_mtime_ns == t for p, t in mtimes.items())

    summaries = {(p.parent.parent.name, int(p.parent.name.removeprefix("seed-"))): json.loads(p.read_text())
                 for p in out.glob("*/seed-*/summary.json")}
    assert len(summaries) == 6 and all(s["status"] == "finished" for s in summaries.values())

    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for row in rows:
        s = summaries[(Path(row["run_dir"]).parent.name, int(row["seed"]))]
        assert float(row["final_val_loss"]) == s["final_val_loss"] and int(row["params"]) == s["params"]
        # the varied key's value in a column of its own, the baseline's too: a table to pivot
        assert row["model.positional"] == row["arm"].removeprefix("positional="), row
    assert list(rows[0])[:4] == ["arm", "baseline", "model.positional", "seed"]

    table = md_rows((out / "results.md").read_text())
    assert table == md_rows(second.output)  # the printed table is the file's
    base_slug = "baseline"
    rope_slug = next(p.name for p in out.iterdir() if p.is_dir() and p.name != base_slug)
    t = report.t_quantile(0.975, 2)
    for label, slug in [("positional=sinusoidal", base_slug), ("positional=rope", rope_slug)]:
        final = [summaries[(slug, seed)]["final_val_loss"] for seed in (0, 1, 2)]
        cells = table[label]
        assert cells[1] == "3"
        assert cells[2] == f"{statistics.fmean(final):.4f} ± {t * statistics.stdev(final) / math.sqrt(3):.4f}"
    diffs = [summaries[(rope_slug, s)]["final_val_loss"] - summaries[(base_slug, s)]["final_val_loss"] for s in (0, 1, 2)]
    mean, half = statistics.fmean(diffs), t * statistics.stdev(diffs) / math.sqrt(3)
    assert table["positional=rope"][4] == f"{mean:+.4f} ± {half:.4f}"
    assert table["positional=rope"][5] == ("within noise" if abs(mean) <= half else "better" if mean < 0 else "worse")
    assert table["positional=sinusoidal"][5] == "baseline"
    manifest = yaml.safe_load((out / "ablation.yaml").read_text())
    assert manifest["seeds"] == [0, 1, 2] and manifest["vary"] == {"model.positional": ["sinusoidal", "rope"]}
    rerun = cli("ablate", out / "ablation.yaml", "--out", out)  # an ablation file for the very same ablation
    assert rerun.exit_code == 0 and "6 of 6 runs finished earlier: skipping them" in rerun.output, rerun.output

    # a finished run is reused only for the very recipe it trained
    before = (out / "ablation.yaml").read_text()
    edited = cli(*args, "--set", "train.lr=0.01")
    assert edited.exit_code == 2 and "ended with a different recipe (train.lr differ)" in edited.output
    assert (out / "ablation.yaml").read_text() == before  # refused before anything was written
    damaged = next(out.glob("*/seed-0/recipe.yaml"))
    recipe = yaml.safe_load(damaged.read_text())
    del recipe["data"]["path"]
    damaged.write_text(yaml.safe_dump(recipe))
    result = cli(*args)
    assert result.exit_code == 2 and "ended with a different recipe (data.path differ)" in result.output


PNG = b"\x89PNG\r\n\x1a\n"  # what every PNG file starts with


def ablate_one_arm(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2})
    return cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", tmp_path / "abl")


def test_ablate_without_matplotlib_hints_at_it(cli, tmp_path, write_recipe, monkeypatch):
    monkeypatch.setattr("gptkit.ablation.plot.have_matplotlib", lambda: False)
    result = ablate_one_arm(cli, tmp_path, write_recipe)
    assert result.exit_code == 0 and "No loss_curves.png: matplotlib is not installed; pip install" in result.output
    assert (tmp_path / "abl" / "results.md").is_file() and not (tmp_path / "abl" / "loss_curves.png").exists()
    assert "n/a (needs 2 seeds)" in result.output


def test_the_plan_and_the_table_write_figures_alike(cli, tmp_path, write_recipe):
    result = ablate_one_arm(cli, tmp_path, write_recipe)
    assert result.exit_code == 0, result.output
    table = md_rows(result.output)
    assert table["baseline"][0] == "baseline (norm=rmsnorm)"  # with its value of what varies, in the plan too
    for title, label in (("baseline (norm=rmsnorm)", "baseline"), ("norm=layernorm", "norm=layernorm")):
        planned = re.search(rf"^  {re.escape(title)} +([\d,]+) params +([\d,]+) FLOPs/token", result.output, re.M)
        assert planned and table[label][6].startswith(planned[1]) and table[label][7] == planned[2], result.output


@pytest.mark.parametrize("margin, said", [(0.015, "1.5%"), (0.005, "0.5%"), (0.05, "5%")])
def test_the_parameter_margin_is_said_as_given(tmp_path, write_recipe, monkeypatch, margin, said):
    """Not rounded: as "2%", a margin of 0.015 would flag an arm 1.8% off as more than 2% off."""
    import gptkit.ablation.runner as runner

    p = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))
    base, arm = p.arms
    monkeypatch.setattr(runner, "sizes", lambda plan, data: {base.slug: (1000, 1),
                                                             arm.slug: (round(1000 * (1 + margin)) + 3, 1)})
    flagged = runner.describe(p, margin, runner.datasets(p))[1]
    assert flagged.endswith(f" parameters vs the baseline (margin {said})"), flagged
    runner.write_reports(tmp_path, rows_of(p, {base.label: [2.0], arm.label: [2.0]}), margin)
    text = (tmp_path / "results.md").read_text()
    assert f"more than {said}." in text and "or Δ is within float32 rounding (1e-05 of the loss)." in text


@pytest.mark.parametrize("seconds, text", [(0.04, "<0.1 s"), (0.43, "0.4 s"), (0.94, "0.9 s"), (0.96, "0:01"),
                                           (1.7, "0:01"), (62, "1:02"), (3723, "1:02:03")])
def test_wall_times_under_a_second_are_not_zero(seconds, text):
    from gptkit.training.progress import fmt_duration

    assert fmt_duration(seconds) == text


def test_ablate_draws_the_loss_curves(cli, tmp_path, write_recipe):
    pytest.importorskip("matplotlib")
    result = ablate_one_arm(cli, tmp_path, write_recipe)
    assert result.exit_code == 0 and "No loss_curves.png" not in result.output, result.output
    assert (tmp_path / "abl" / "loss_curves.png").read_bytes().startswith(PNG)


def test_plot_shows_single_evaluations_and_names_a_label_it_cannot_draw(tmp_path, monkeypatch, capsys):
    """A short run evaluates once, at its end: one point, which a line without markers leaves invisible."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from gptkit.ablation.plot import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    curves = {"one seed": [[(512, 2.5)]], "two seeds": [[(512, 2.4)], [(512, 2.6)]],
              "apart": [[(256, 2.0)], [(512, 2.1)]]}  # its seeds were never evaluated at the same step
    assert plot_curves(curves, tmp_path / "c.png", "t", {"two seeds": "diverged on 1/3 seeds"})
    ax = figures[0].axes[0]
    drawn = {line.get_label(): line for line in ax.get_lines() if len(line.get_xdata())}
    assert set(drawn) == {"one seed (n=1)", "two seeds (n=2; diverged on 1/3 seeds)"}
    for line in drawn.values():
        assert list(line.get_xdata()) == [512] and line.get_marker() not in ("", "None", None) and line.get_visible()
    assert drawn["two seeds (n=2; diverged on 1/3 seeds)"].get_ydata()[0] == pytest.approx(2.5)
    (spread,) = [c for c in ax.collections if c.get_segments()]  # the min-max band of one point: a bar
    assert [list(map(list, s)) for s in spread.get_segments()] == [[[512, 2.4], [512, 2.6]]]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "apart: not drawn, its seeds share no evaluation step" in legend
    err = capsys.readouterr().err
    assert err == f"warning: {tmp_path / 'c.png'} leaves out apart (its seeds share no evaluation step)\n"


def test_the_baseline_is_drawn_over_the_arms_that_match_it_and_named_first(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from gptkit.ablation.plot import plot_curves

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    same = [[(256, 2.5), (512, 2.0)]]
    curves = {"attention=naive": same, "baseline (attention=flash)": same, "norm=layernorm": [[(256, 2.4), (512, 2.1)]]}
    assert plot_curves(curves, tmp_path / "c.png", "t", reference="baseline (attention=flash)")
    ax = figures[0].axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    base = lines["baseline (attention=flash) (n=1)"]
    assert base.get_color() == "black" and base.get_linestyle() == "--"
    assert base.get_zorder() > max(line.get_zorder() for line in lines.values() if line is not base)
    assert [t.get_text() for t in ax.get_legend().get_texts()][0] == "baseline (attention=flash) (n=1)"


def test_a_dollar_in_a_label_or_title_is_drawn_as_it_is(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from gptkit.ablation.plot import plot_curves

    curves = {"prompt=$x^$": [[(256, 2.5), (512, 2.0)]], "prompt=$5 or $3": [[(256, 2.4), (512, 2.1)]]}
    assert plot_curves(curves, tmp_path / "c.png", "$\\frac{$", {"prompt=$x^$": "$"})  # no maths: no parse error
    assert (tmp_path / "c.png").read_bytes().startswith(PNG) and capsys.readouterr().err == ""


def test_labels_the_plots_font_cannot_draw_are_one_warning_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from gptkit.ablation.plot import plot_curves

    curves = {"運行-日本語": [[(256, 2.5), (512, 2.0)]], "run": [[(256, 2.4), (512, 2.1)]]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none escapes as Python's several-line warning
        assert plot_curves(curves, tmp_path / "c.png", "t")
    err = capsys.readouterr().err
    assert (tmp_path / "c.png").stat().st_size > 0 and len(err.splitlines()) == 1, err
    assert err.startswith(f"warning: {tmp_path / 'c.png'}: its font has no ") and "drawn as boxes" in err, err


@pytest.fixture
def two_runs(cli, tmp_path, write_recipe):
    """Run folders of the tiny recipe with sinusoidal and with rope positions."""
    recipe = write_recipe(train={"max_steps": 2})
    for pos in ("sinusoidal", "rope"):
        assert cli("run", recipe, "--runs-dir", tmp_path / pos, "-q", "--set", f"model.positional={pos}").exit_code == 0
    return [next((tmp_path / pos).iterdir()) for pos in ("sinusoidal", "rope")]


def test_compare(cli, tmp_path, two_runs):
    result = cli("compare", *two_runs)
    assert result.exit_code == 0, result.output
    diff = md_rows(result.output.split("Final figures:")[0])
    assert diff["model.positional.name"][1:] == ["sinusoidal", "rope"] and "train.lr" not in diff
    assert diff["model.positional.amplitude"][1:] == ["0.02", "(absent)"]  # sinusoidal has one, rope none
    figures = md_rows(result.output.split("Final figures:")[1])
    summary = json.loads((two_runs[1] / "summary.json").read_text())
    assert figures["final_val_loss"][2] == f"{summary['final_val_loss']:.4f}" and figures["status"][1] == "finished"
    summary_file = two_runs[0] / "summary.json"
    summary_file.write_text(json.dumps({**json.loads(summary_file.read_text()), "status": "running"}))
    figures = md_rows(cli("compare", *two_runs).output.split("Final figures:")[1])  # no process holds its lock
    assert figures["status"][1] == "stopped (killed?)"
    missing = cli("compare", two_runs[0], tmp_path)
    assert missing.exit_code == 2 and f"{tmp_path}: not a run folder (it has no recipe.yaml)" in missing.output
    missing = cli("compare", two_runs[0], tmp_path / "nowhere")
    assert missing.exit_code == 2 and f"{tmp_path / 'nowhere'}: no such folder" in missing.output
    # a folder of runs (runs/ itself, an arm's folder of seed-N runs): one of them, by name
    holding = cli("compare", two_runs[0], tmp_path / "rope")
    assert holding.exit_code == 2 and holding.output == (f"error: {tmp_path / 'rope'}: not a run folder (it has no "
                                                         f"recipe.yaml); it holds runs: give one of them, e.g. "
                                                         f"{two_runs[1]}\n"), holding.output
    sampled = cli("sample", tmp_path / "rope")
    assert sampled.exit_code == 2 and sampled.output == (f"error: checkpoint {tmp_path / 'rope' / 'checkpoint.pt'} not "
                                                         f"found: {tmp_path / 'rope'} is not a run folder; it holds runs: "
                                                         f"give one of them, e.g. {two_runs[1]}\n"), sampled.output
    resumed = cli("run", "--resume", tmp_path / "rope")
    assert resumed.exit_code == 2 and f"it holds runs: give one of them, e.g. {two_runs[1]}, or --resume auto" in \
        resumed.output, resumed.output


def test_compare_of_an_ablation_folder_points_at_its_runs(cli, tmp_path, two_runs):
    folder = tmp_path / "abl"
    for run in ("baseline/seed-12", "baseline/seed-3", "norm-layernorm/seed-3"):
        (folder / run).mkdir(parents=True)
    (folder / "ablation.yaml").write_text("name: abl\n")
    (folder / "results.md").write_text("# abl\n")
    result = cli("compare", two_runs[0], folder)
    assert result.exit_code == 2 and result.output == (
        f"error: {folder} is an ablation folder, not a run folder: its results are in {folder / 'results.md'}; "
        f"compare its arms' runs of one seed with: gptkit compare {folder}/*/seed-3\n")


def test_compare_names_each_runs_folder_when_their_folders_differ(tmp_path):
    from gptkit.cli.compare import short_names

    abl = tmp_path / "abl"
    assert short_names([abl / "baseline/seed-1337", abl / "baseline/seed-1338", abl / "norm-layernorm/seed-1339"]) \
        == ["baseline/seed-1337", "baseline/seed-1338", "norm-layernorm/seed-1339"]  # not three seeds of one arm
    assert short_names([abl / "rope/seed-0", abl / "alibi/seed-0"]) == ["rope/seed-0", "alibi/seed-0"]
    assert short_names([tmp_path / "run-1", tmp_path / "run-2"]) == ["run-1", "run-2"]  # one folder: said by none
    assert short_names([tmp_path / "x/abl/seed-1", tmp_path / "y/abl/seed-2"]) == ["x/abl/seed-1", "y/abl/seed-2"]


def test_compare_shows_every_value_on_one_line_of_its_own_cell():
    from gptkit.ablation.report import table
    from gptkit.cli.compare import ABSENT, show

    values = ["KING:\nThe", "", " ROMEO", "null", "a|b", None, ABSENT, "plain"]
    text = table(["key", *map(str, range(len(values)))], [["sample.prompt", *map(show, values)]])
    assert len(text.splitlines()) == 3  # header, rule, the one row
    assert md_rows(text)["sample.prompt"] == ["sample.prompt", '"KING:\\nThe"', '""', '" ROMEO"', '"null"', "a\\|b",
                                              "null", "(absent)", "plain"]


def test_compare_writes_booleans_as_a_recipe_does():
    from gptkit.cli.compare import show

    assert [show(True), show(False), show("True")] == ["true", "false", "True"]


def test_compare_plots(cli, tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    result = cli("compare", *two_runs, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0 and f"Wrote {tmp_path / 'c.png'}" in result.output, result.output
    assert (tmp_path / "c.png").read_bytes().startswith(PNG)


def test_compare_plot_to_an_unwritable_place_and_a_hand_edited_summary(cli, tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    (tmp_path / "afile").write_text("x")
    for plot in (tmp_path / "afile" / "c.png", tmp_path / "afile" / "sub" / "c.png"):
        result = cli("compare", *two_runs, "--plot", plot)
        assert result.exit_code == 2 and result.output == (f"error: --plot {plot}: cannot write it there: "
                                                           f"{tmp_path / 'afile'} is a file, not a folder; "
                                                           "choose another file\n")  # before the tables
    assert not list(tmp_path.glob("afile*/.*.tmp")) and (tmp_path / "afile").read_text() == "x"
    summary = json.loads((two_runs[0] / "summary.json").read_text())
    (two_runs[0] / "summary.json").write_text(json.dumps({**summary, "final_val_loss": "x"}))
    result = cli("compare", *two_runs)
    assert result.exit_code == 0 and md_rows(result.output.split("Final figures:")[1])["final_val_loss"][1] == "'x'"


def test_compare_plot_of_runs_without_validation_losses_draws_nothing(cli, tmp_path, two_runs):
    for run in two_runs:
        (run / "metrics.jsonl").write_text('{"step": 1, "train_loss": 3.0}\n')
    result = cli("compare", *two_runs, "--plot", tmp_path / "c.png")
    names = [f"{run.parent.name}/{run.name}" for run in two_runs]
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        f"error: --plot: none of these runs has a validation loss to draw ({names[0]}: no validation loss in its "
        f"metrics.jsonl; {names[1]}: no validation loss in its metrics.jsonl)"), result.output  # finished: none will come
    assert not (tmp_path / "c.png").exists()


def test_compare_plot_leaves_out_validation_losses_that_are_not_finite(cli, tmp_path, two_runs):
    pytest.importorskip("matplotlib")
    (two_runs[0] / "metrics.jsonl").write_text('{"step": 1, "val_loss": NaN}\n{"step": 2, "val_loss": Infinity}\n')
    result = cli("compare", *two_runs, "--plot", tmp_path / "c.png")  # a finished run: none will come
    assert result.exit_code == 0 and f"{two_runs[0].name} (no validation loss in its metrics.jsonl)" in result.output, \
        result.output


def test_compare_plot_without_matplotlib_is_a_clear_error(cli, tmp_path, two_runs, monkeypatch):
    monkeypatch.setattr("gptkit.ablation.plot.have_matplotlib", lambda: False)
    result = cli("compare", *two_runs, "--plot", tmp_path / "c.png")
    assert result.exit_code == 2 and "--plot needs matplotlib, which is not installed" in result.output, result.output
    assert not (tmp_path / "c.png").exists()


def test_compare_reads_an_edited_recipe_as_recipes_are_read(cli, two_runs):
    """YAML 1.2, as gptkit's recipes: 1e-3 is a number (PyYAML's YAML 1.1 reads a string)."""
    path = two_runs[0] / "recipe.yaml"
    lr = re.search(r"^  lr: (.*)$", path.read_text(), re.M)
    path.write_text(path.read_text().replace(lr.group(0), f"  lr: {float(lr.group(1)):.0e}".replace("e-0", "e-")))
    result = cli("compare", *two_runs)
    assert result.exit_code == 0 and "train.lr" not in result.output.split("Final figures:")[0], result.output


@pytest.mark.parametrize("text, args, message", [
    ("not: [valid", [], "recipe.yaml is damaged (it is not valid YAML)"),
    ("- 1\n", [], "recipe.yaml is damaged (it holds no mapping of recipe fields)"),
    ("", [], "recipe.yaml is damaged (it holds no mapping of recipe fields)"),
    ("name: x\n", ["--plot", "c.png"], "recipe.yaml is damaged (it lacks train.batch_size or model.block_size)"),
])
def test_compare_reports_a_damaged_recipe(cli, tmp_path, text, args, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(text)
    result = cli("compare", run, *[tmp_path / a if a.endswith(".png") else a for a in args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c.png").exists()


def test_a_diverging_arm_is_a_result_not_the_end_of_the_ablation(cli, tmp_path, write_recipe, temporary_component):
    temporary_component("feedforward", "goes-nan", breaks_after(2, how="nan"))
    recipe = write_recipe(model={"feedforward": "mlp"}, train={"max_steps": 4, "eval_every": 2, "eval_batches": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.feedforward=mlp,goes-nan", "--seeds", "2", "--out", out)
    first = cli(*args)
    assert first.exit_code == 0, first.output
    assert "feedforward=goes-nan, seed 0: training diverged at step 3" in first.output
    table = md_rows((out / "results.md").read_text())
    assert table["feedforward=goes-nan"][1] == "0 (2 diverged)" and table["feedforward=goes-nan"][5] == \
        "diverged on 2/2 seeds"
    assert table["feedforward=mlp"][1] == "2" and "2 of 4 runs finished, 2 diverged." in (out / "results.md").read_text()
    from gptkit.plugins import software

    assert (f"2 diverged. Seeds: 0, 1. Each baseline run: 4 steps, 1,024 tokens. Data: 47 characters, 9,351 training "
            f"and 1,038 validation tokens of data.path {tmp_path / 'corpus.txt'}. Trained with gptkit "
            f"{software()['gptkit']} (sha256 {software()['gptkit_sha256']}), torch {software()['torch']}. Components "
            "not built in: model.feedforward: goes-nan from test. The recipe is baseline.yaml, the arms and seeds "
            "ablation.yaml.\n") in (out / "results.md").read_text()  # on its own
    with open(out / "results.csv", newline="") as f:
        statuses = {(r["arm"], r["seed"]): (r["status"], r["reason"]) for r in csv.DictReader(f)}
    assert statuses[("feedforward=goes-nan", "1")][0] == "diverged" and "diverged" in statuses[("feedforward=goes-nan", "1")][1]

    again = cli(*args)  # rerunning does not train the diverged runs again
    assert again.exit_code == 0 and "4 of 4 runs finished earlier (2 of them diverged): skipping them" in again.output


def test_arm_folders_do_not_depend_on_the_order_of_the_values_when_names_are_long(write_recipe):
    path = write_recipe()
    keys = ["model.attention", "model.feedforward", "model.norm", "model.positional", "train.weight_decay"]
    vary = {k: v for k, v in zip(keys, [["naive"], ["mlp"], ["layernorm"], ["sinusoidal"], ["0.0", "0.1"]])}
    a = plan(Ablation(recipe=path, vary=vary, mode="grid"))
    b = plan(Ablation(recipe=path, vary={**vary, "train.weight_decay": ["0.1", "0.0"]}, mode="grid"))
    assert {arm.slug: canonical(arm.recipe) for arm in a.arms} == {arm.slug: canonical(arm.recipe) for arm in b.arms}
    assert all(len(arm.slug) <= 80 for arm in a.arms)


def test_the_same_arms_around_another_baseline_are_another_ablation(write_recipe):
    path = write_recipe(model={"norm": "rmsnorm"})
    one = plan(Ablation(recipe=path, vary={"model.norm": ["layernorm"]}))
    other = plan(Ablation(recipe=path, overrides=["model.norm=layernorm"], vary={"model.norm": ["rmsnorm"]}))
    assert one.digest != other.digest


def positional(recipe) -> tuple[str, float | None]:
    return recipe.model.positional.name, getattr(recipe.model.positional.params, "base", None)


@pytest.mark.parametrize("keys", [["model.positional.base", "model.positional"], ["model.positional", "model.positional.base"]])
def test_a_component_is_named_before_its_parameters_are_set_whatever_the_order(write_recipe, keys):
    """--vary model.positional.base=500,10000 --vary model.positional=rope,sinusoidal: four arms, each with
    the values its label lists, not rope at base 10000 labelled base=500."""
    values = {"model.positional.base": ["500", "10000"], "model.positional": ["rope", "sinusoidal"]}
    p = plan(Ablation(recipe=write_recipe(), vary={k: values[k] for k in keys}))
    arms = {(dict(a.changes)["model.positional"], float(dict(a.changes)["model.positional.base"])): positional(a.recipe)
            for a in p.arms}
    assert arms == {(name, base): (name, base) for name in ("rope", "sinusoidal") for base in (500, 10000)}


def test_set_parameters_hold_in_every_arm_whatever_the_order(write_recipe):
    from gptkit.recipe import load_recipe

    path = write_recipe()
    p = plan(Ablation(recipe=path, overrides=["model.feedforward.hidden=64"], vary={"model.feedforward": ["swiglu", "mlp"]}))
    assert [(a.recipe.model.feedforward.name, a.recipe.model.feedforward.params.hidden) for a in p.arms] == \
        [("swiglu", 64), ("mlp", 64)]
    sets = ["model.positional.base=500", "model.positional=rope"]  # the baseline is what gptkit run trains
    baseline = plan(Ablation(recipe=path, overrides=sets, vary={"model.norm": ["layernorm"]})).baseline.recipe
    assert positional(baseline) == positional(load_recipe(path, sets)) == ("rope", 500)


def test_an_arm_whose_values_do_not_all_hold_is_refused(cli, tmp_path, write_recipe):
    result = cli("ablate", write_recipe(), "--out", tmp_path / "abl", "--set", "model.positional.base=500",
                 "--vary", "model.positional=rope,{name: rope, base: 1000}")
    assert result.exit_code == 2 and "arm positional={name: rope, base: 1000}: its model.positional would be " \
        "{name: rope, base: 500.0}, not {name: rope, base: 1000} (--set model.positional.base=500 sets a field in it)" \
        in result.output, result.output
    assert not (tmp_path / "abl").exists()


def test_a_component_named_only_names_the_folder_as_its_bare_name(tmp_path, write_recipe):
    path = write_recipe()
    (tmp_path / "abl.yaml").write_text(f"recipe: {path.name}\nvary: {{model.positional: [sinusoidal, rope, {{name: alibi}}]}}\n")
    typed = plan(Ablation(recipe=path, vary={"model.positional": ["sinusoidal", "rope", "alibi"]}))
    filed = plan(load_ablation(tmp_path / "abl.yaml"))
    assert [a.slug for a in filed.arms] == [a.slug for a in typed.arms] == ["baseline", "positional-rope", "positional-alibi"]
    assert filed.digest == typed.digest


def test_an_ablation_files_paths_are_relative_to_it(tmp_path, write_recipe, corpus, monkeypatch):
    (tmp_path / "sub").mkdir()
    for name in ("uni.txt", "two.txt"):
        (tmp_path / "sub" / name).write_text(corpus.read_text())
    (tmp_path / "sub" / "abl.yaml").write_text(f"recipe: ../{write_recipe().name}\nset: {{data.path: uni.txt}}\n"
                                               "vary: {data.path: [two.txt]}\nallow_unfair: true\n")
    plans = []
    for cwd in (tmp_path, tmp_path / "sub"):
        monkeypatch.chdir(cwd)
        plans.append(plan(load_ablation(tmp_path / "sub" / "abl.yaml")))
    assert [a.recipe.data.path for a in plans[0].arms] == [tmp_path / "sub" / "uni.txt", tmp_path / "sub" / "two.txt"]
    assert plans[0].digest == plans[1].digest and plans[0].arms[1].slug == "path-two.txt"
    typed = plan(Ablation(recipe=write_recipe(), overrides=["data.path=uni.txt"], vary={"data.path": ["two.txt"]},
                          allow_unfair=True))  # from sub/, as the command line reads paths
    assert typed.digest == plans[1].digest and [a.slug for a in typed.arms] == [a.slug for a in plans[1].arms]


def test_folder_names_keep_the_sign_of_an_exponent(write_recipe):
    p = plan(Ablation(recipe=write_recipe(), vary={"train.lr": ["1e30", "1e-30"]}))
    assert [a.slug for a in p.arms[1:]] == ["lr-1.0e+30", "lr-1.0e-30"]


COMPONENTS = """
import torch
from torch import nn
from gptkit.components import FeedForward, Norm, register
from gptkit.components.positional import Learned


@register("norm", "measured")
class Measured(Norm):
    '''Reads a weight's value when built: no tensor on the meta device has one.'''

    def __init__(self, config, params):
        super().__init__(config, params)
        self.weight = nn.Parameter(torch.ones(config.n_embd))
        self.scale = float(self.weight.detach().norm())

    def forward(self, x):
        return x * self.weight / self.scale


@register("norm", "unbuildable")
class Unbuildable(Norm):
    def __init__(self, config, params):
        super().__init__(config, params)
        raise ValueError("no norm today")

    def forward(self, x):
        return x


@register("feedforward", "wide")
class Wide(FeedForward):
    def forward(self, x):
        return torch.cat((x, x), dim=-1)


@register("positional", "from0")
class From0(Learned):
    def embed(self, x, start=0):
        return super().embed(x)  # start ignored: the key/value cache gives other logits
"""


def test_an_arm_whose_component_cannot_be_built_on_the_meta_device_still_runs(cli, tmp_path, write_recipe,
                                                                                scratch_registries):
    (tmp_path / "mine.py").write_text(COMPONENTS)
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    result = cli("ablate", recipe, "--vary", "model.norm=rmsnorm,measured", "--seeds", "1", "--out", tmp_path / "abl")
    assert result.exit_code == 0, result.output
    assert "norm=measured " in result.output and "params" in result.output


@pytest.mark.parametrize("vary, message", [
    ("model.norm=rmsnorm,unbuildable", "error: arm norm=unbuildable: norm 'unbuildable' from {file} is broken: building "
                                       "it raised ValueError: no norm today"),
    ("model.feedforward=swiglu,wide", "error: arm feedforward=wide: feedforward 'wide' from {file} is broken: its "
                                      "forward returned (2, 2, 64) torch.float32 for an input of (2, 2, 32)"),
])
def test_a_broken_arm_is_named_before_any_arm_trains(cli, tmp_path, write_recipe, scratch_registries, vary, message):
    (tmp_path / "mine.py").write_text(COMPONENTS)
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    result = cli("ablate", recipe, "--vary", vary, "--seeds", "1", "--out", tmp_path / "abl")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message.format(file=tmp_path / "mine.py") in result.output, result.output
    assert not (tmp_path / "abl").exists()  # the baseline, listed first, did not train


def test_an_arm_whose_key_value_cache_does_not_match_trains_and_warns_once(cli, tmp_path, write_recipe,
                                                                         scratch_registries):
    (tmp_path / "mine.py").write_text(COMPONENTS)
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    result = cli("ablate", recipe, "--vary", "model.positional=sinusoidal,from0", "--seeds", "1", "--out",
                 tmp_path / "abl")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]  # its own run's
    assert warning.startswith("warning: the logits of 4 tokens fed through a key/value cache") and \
        "positional 'from0', the model's only plugin component, breaks it" in warning, warning
    assert "2 of 2 runs finished." in (tmp_path / "abl" / "results.md").read_text()


def test_compare_says_a_run_diverged(cli, tmp_path, write_recipe, two_runs):
    pytest.importorskip("matplotlib")
    recipe = write_recipe(train={"max_steps": 1, "lr": 1e10, "grad_clip": None})
    assert cli("run", recipe, "--runs-dir", tmp_path / "nan", "-q").exit_code == 3
    gone = next((tmp_path / "nan").iterdir())
    result = cli("compare", two_runs[0], gone, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    assert md_rows(result.output.split("Final figures:")[1])["status"][1:] == ["finished", "diverged"]
    (warning,) = [line for line in result.output.splitlines() if line.startswith("warning: --plot leaves out")]
    assert warning.endswith(f"{gone.name} (it diverged before its first validation)"), warning


def test_compare_plot_names_runs_without_a_validation_split(cli, tmp_path, write_recipe, two_runs):
    pytest.importorskip("matplotlib")
    recipe = write_recipe(train={"max_steps": 2})
    assert cli("run", recipe, "--runs-dir", tmp_path / "noval", "-q", "--set", "data.val_fraction=0").exit_code == 0
    noval = next((tmp_path / "noval").iterdir())
    result = cli("compare", two_runs[0], noval, "--plot", tmp_path / "c.png")
    assert result.exit_code == 0, result.output
    (warning,) = [line for line in result.output.splitlines() if line.startswith("warning: --plot leaves out")]
    assert warning.endswith(f"{noval.name} (no validation split: data.val_fraction is 0)"), warning  # only it
    assert warning.count("(") == 1
    assert "yet" not in result.output
    alone = cli("compare", noval, "--plot", tmp_path / "d.png")
    assert alone.exit_code == 2 and "error: --plot: none of these runs has a validation loss, nor ever will (no " \
        "validation split: data.val_fraction is 0); nothing to draw" in alone.output, alone.output


@pytest.mark.parametrize("where", ["runs-dir", "out", "out-below"])
def test_an_ablation_folder_that_cannot_be_made_is_refused_before_the_plan(cli, tmp_path, write_recipe, where):
    recipe = write_recipe(train={"max_steps": 2})
    (tmp_path / "notes.txt").write_text("mine")
    flag, value = {"runs-dir": ("--runs-dir", "notes.txt"), "out": ("--out", "notes.txt/abl"),
                   "out-below": ("--out", "notes.txt/a/abl")}[where]
    before = set(tmp_path.rglob("*"))
    result = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", flag, value)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: cannot create the ablation folder notes.txt/")
    fix = "pass --out with a folder that can be created" if flag == "--out" else \
        "pass --runs-dir with a writable folder"
    assert result.output.endswith(f": {tmp_path / 'notes.txt'} is a file, not a folder; {fix}\n"), result.output
    assert set(tmp_path.rglob("*")) == before and (tmp_path / "notes.txt").read_text() == "mine"


def test_an_ablation_folder_that_only_trying_shows_cannot_be_made_is_one_error(cli, write_recipe, tmp_path, monkeypatch):
    """As a folder under /proc, which looks writable to root, but in which no folder can be made."""
    mkdir = Path.mkdir

    def refused(self, *args, **kwargs):
        if self.name == "pseudo":
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))
        return mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    result = cli("ablate", write_recipe(), "--vary", "model.norm=layernorm", "--seeds", "1", "--out", tmp_path / "pseudo")
    assert result.exit_code == 2 and result.output.splitlines()[-1] == (
        f"error: cannot create the ablation folder {tmp_path / 'pseudo'}: No such file or directory; choose another "
        "with --out or --runs-dir"), result.output


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_an_ablation_folder_in_an_unwritable_folder_is_refused_before_the_plan(cli, tmp_path, write_recipe):
    (tmp_path / "ro").mkdir(mode=0o555)
    result = cli("ablate", write_recipe(), "--vary", "model.norm=layernorm", "--seeds", "1", "--runs-dir", "ro")
    assert result.exit_code == 2 and result.output.startswith("error: cannot create the ablation folder ro/ablations/")
    assert f"{tmp_path / 'ro'} is not writable; pass --runs-dir with a writable folder" in result.output


def test_an_ablation_keeps_its_baseline_recipe(cli, tmp_path, write_recipe):
    """ablation.yaml names a snapshot of the baseline recipe: the recipe the ablation started from may
    change, and the folder's ablation is still the one it holds."""
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--set", "train.lr=0.002", "--seeds", "1",
            "--runs-dir", tmp_path / "runs")
    first = cli(*args)
    assert first.exit_code == 0, first.output
    (out,) = (tmp_path / "runs" / "ablations").iterdir()
    manifest = yaml.safe_load((out / "ablation.yaml").read_text())
    assert manifest["recipe"] == "baseline.yaml" and manifest["set"] == {"train.lr": 0.002}
    snapshot = yaml.safe_load((out / "baseline.yaml").read_text())
    assert snapshot == yaml.safe_load((out / "baseline" / "seed-0" / "recipe.yaml").read_text())  # resolved, lr set
    assert snapshot["train"]["lr"] == 0.002 and Path(snapshot["data"]["path"]).is_absolute()
    assert plan(load_ablation(out / "ablation.yaml")).digest == out.name.rsplit("-", 1)[1]  # the same folder
    again = cli(*args)  # the command as first given still finds the folder
    assert again.exit_code == 0 and "2 of 2 runs finished earlier" in again.output, again.output

    text = recipe.read_text()
    recipe.write_text(text.replace("n_embd: 32", "n_embd: 64"))  # the user edits the recipe
    resumed = cli("ablate", out / "ablation.yaml", "--out", out, "--seeds", "0,1")
    assert resumed.exit_code == 0 and "2 of 4 runs finished earlier" in resumed.output, resumed.output
    trained = yaml.safe_load((out / "baseline" / "seed-1" / "recipe.yaml").read_text())
    assert trained["model"]["n_embd"] == 32 and (out / "baseline.yaml").read_text().count("n_embd: 32") == 1

    # A folder from before the snapshot, whose ablation.yaml names the recipe itself, resumes as it did.
    recipe.write_text(text)
    (out / "baseline.yaml").unlink()
    old = (out / "ablation.yaml").read_text().replace("recipe: baseline.yaml", f"recipe: {recipe}")
    (out / "ablation.yaml").write_text(old)
    older = cli("ablate", out / "ablation.yaml", "--out", out)
    assert older.exit_code == 0 and "4 of 4 runs finished earlier" in older.output, older.output
    assert yaml.safe_load((out / "ablation.yaml").read_text())["recipe"] == "baseline.yaml"
    assert yaml.safe_load((out / "baseline.yaml").read_text()) == snapshot


FINISHED = {"status": "finished", "resumable": False}
DIVERGED = {"status": "failed", "resumable": False, "reason": "training diverged at step 3: the loss is nan"}


def rows_of(p, finals: dict[str, list]) -> list[report.RunRow]:
    """RunRows of plan `p`'s arms ({label: [final val loss, or a summary, per seed]}), as summary.json says."""
    arms = {a.label: a for a in p.arms}

    def summary(v):
        return v if isinstance(v, dict) or v is None else {**FINISHED, "final_val_loss": v, "best_val_loss": v}

    return [report.RunRow(arms[label], seed, f"{arms[label].slug}/seed-{seed}", summary(v))
            for label, values in finals.items() for seed, v in enumerate(values)]


def test_a_grid_reports_each_keys_main_effect_paired_over_the_other_keys(write_recipe):
    p = plan(Ablation(recipe=write_recipe(model={"positional": "sinusoidal", "norm": "rmsnorm"}),
                      vary={"model.positional": ["sinusoidal", "rope"], "model.norm": ["rmsnorm", "layernorm"]}))
    # rope is 0.3 better beside rmsnorm and 0.1 beside layernorm; layernorm 0.05 worse beside either, give or take
    rows = rows_of(p, {"positional=sinusoidal norm=rmsnorm": [2.0, 2.1, 2.2],
                       "positional=rope norm=rmsnorm": [1.7, 1.8, 1.9],
                       "positional=sinusoidal norm=layernorm": [2.05, 2.16, 2.24],
                       "positional=rope norm=layernorm": [1.95, 2.06, 2.14]})
    section = report.main_effects(rows)
    effects = {r[0]: r for r in ([c.strip() for c in line.strip("| ").split(" | ")]
                                 for line in section.splitlines()[4:8] if "=" in line)}
    # paired by seed and norm, averaged over the norms within each seed: the seeds' runs are no independent repeats
    rope = [(1.7 - 2.0 + 1.95 - 2.05) / 2, (1.8 - 2.1 + 2.06 - 2.16) / 2, (1.9 - 2.2 + 2.14 - 2.24) / 2]
    mean, half = report.mean_ci(rope)
    assert effects["positional=rope"][1:] == ["positional=sinusoidal", f"{mean:+.4f} ± {half:.4f}", "3 (6)", "better"]
    layernorm = [(2.05 - 2.0 + 1.95 - 1.7) / 2, (2.16 - 2.1 + 2.06 - 1.8) / 2, (2.24 - 2.2 + 2.14 - 1.9) / 2]
    mean, half = report.mean_ci(layernorm)
    assert effects["norm=layernorm"][1:] == ["norm=rmsnorm", f"{mean:+.4f} ± {half:.4f}", "3 (6)", "worse"]
    assert set(effects) == {"positional=rope", "norm=layernorm"} and "interaction" in section
    # one seed is no interval, however many cells it has
    one_seed = [r for r in rows if r.seed == rows[0].seed]
    assert re.search(r"^\| positional=rope .* \| -0\.2000 +\| 1 \(2\) +\| n/a \(needs 2 seeds\) +\|$",
                     report.main_effects(one_seed), re.M)
    # a seed one cell lacks is left out until it has every pair: its average would weigh one norm alone
    rows[3].summary = None
    assert "| 2 (4) " in report.main_effects(rows).split("positional=rope")[1].splitlines()[0]
    # one that diverged, or failed, leaves its value neither better nor worse, as in the arms' table
    rows[4].summary, rows[5].summary = DIVERGED, {"status": "failed", "reason": "ComponentError: x"}
    effects = report.main_effects(rows)
    assert re.search(r"^\| positional=rope .* \| 1 run diverged; 1 run failed +\|$", effects, re.M), effects
    # (and norm=layernorm's, whose reference cells hold them)
    assert re.search(r"^\| norm=layernorm .* \| 1 run diverged; 1 run failed +\|$", effects, re.M), effects
    # one value, however spelled, reads one way; keys are named as the arms' labels name them
    spelt = plan(Ablation(recipe=write_recipe(train={"lr": 0.001}), vary={
        "train.optimizer.name": ["adamw", "muon"], "train.lr": ["3e-3", "1e-3"]}))
    assert spelt.baseline.factors == {"train.optimizer.name": "adamw", "train.lr": "0.001"}
    assert {a.factors["train.lr"] for a in spelt.arms} == {"0.001", "0.003"}
    # and the labels as the main effects and ablation.yaml (which a resumed ablation reads) write it
    assert [a.title for a in spelt.arms] == ["optimizer=adamw lr=0.001 (baseline)", "optimizer=adamw lr=0.003",
                                             "optimizer=muon lr=0.003", "optimizer=muon lr=0.001"]
    effects = report.main_effects(rows_of(spelt, {a.label: [2.0, 2.1] for a in spelt.arms}))
    assert "| optimizer=muon " in effects and "| lr=0.003 " in effects and "| lr=0.001 " in effects, effects
    # one key, or one at a time: the arms' table is the comparison
    one = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))
    assert report.main_effects(rows_of(one, {a.label: [2.0, 2.1] for a in one.arms})) == ""
    oat = plan(Ablation(recipe=write_recipe(), mode="one-at-a-time",
                        vary={"model.positional": ["rope"], "model.norm": ["layernorm"]}))
    assert report.main_effects(rows_of(oat, {a.label: [2.0, 2.1] for a in oat.arms})) == ""


def test_main_effects_that_do_not_survive_holms_correction_say_so(write_recipe):
    p = plan(Ablation(recipe=write_recipe(model={"positional": "sinusoidal", "norm": "rmsnorm"}),
                      vary={"model.positional": ["sinusoidal", "rope"], "model.norm": ["rmsnorm", "layernorm"]}))
    base, rope, layernorm = [2.0, 2.1, 2.2], [-0.10, -0.13, -0.18], [0.10, 0.13, 0.18]  # each key's effect by seed
    assert 0.025 < report.paired_p(rope) == report.paired_p(layernorm) < 0.05  # alone each holds; two at once not
    cells = {"positional=sinusoidal norm=rmsnorm": base,
             "positional=rope norm=rmsnorm": [b + r for b, r in zip(base, rope)],
             "positional=sinusoidal norm=layernorm": [b + n for b, n in zip(base, layernorm)],
             "positional=rope norm=layernorm": [b + r + n for b, r, n in zip(base, rope, layernorm)]}
    effects = report.main_effects(rows_of(p, cells))
    assert re.search(r"^\| positional=rope .* \| better \(not after Holm's correction for 2 values\) +\|$", effects, re.M)
    assert re.search(r"^\| norm=layernorm .* \| worse \(not after Holm's correction for 2 values\) +\|$", effects, re.M)
    assert "Holm's correction across the values compared" in effects
    strong = {**cells, "positional=rope norm=rmsnorm": [b - 0.3 for b in base],  # rope 0.3 better beside rmsnorm
              "positional=rope norm=layernorm": [b - 0.3 + n for b, n in zip(base, layernorm)]}
    effects = report.main_effects(rows_of(p, strong))  # Holm's step-down: the weaker one is tested at 5% alone
    assert re.search(r"^\| positional=rope .* \| better +\|$", effects, re.M), effects
    assert re.search(r"^\| norm=layernorm .* \| worse +\|$", effects, re.M), effects


def test_an_arm_whose_every_seed_diverged_still_shows_its_size(write_recipe):
    p = plan(Ablation(recipe=write_recipe(), vary={"train.lr": ["0.001", "10.0"]}))
    gone = {**DIVERGED, "params": 27328, "flops_per_token": 187584}
    rows = rows_of(p, {"lr=0.001": [2.0, 2.1], "lr=10.0": [gone, gone]})
    cells = md_rows(report.markdown(report.arm_stats(rows), 0.1))["lr=10.0"]
    assert cells[1] == "0 (2 diverged)" and cells[6:8] == ["27,328", "187,584"], cells


def test_an_arm_with_diverged_seeds_is_never_better_and_ranks_after_the_others(tmp_path, write_recipe, monkeypatch):
    """Its mean covers only the seeds that survived: it is not compared as if it covered them all."""
    import matplotlib.pyplot as plt

    import gptkit.ablation.runner as runner

    p = plan(Ablation(recipe=write_recipe(), vary={"model.positional": ["sinusoidal", "rope", "alibi"]}))
    rows = rows_of(p, {"positional=sinusoidal": [2.0, 2.1, 2.2, 2.3], "positional=rope": [2.01, 2.12, 2.21, 2.33],
                       "positional=alibi": [1.7, 1.81, DIVERGED, DIVERGED]})
    stats = report.arm_stats(rows)
    assert [s.arm.label for s in stats] == ["positional=sinusoidal", "positional=rope", "positional=alibi"]
    runner.write_reports(tmp_path, rows, 0.1)
    text = (tmp_path / "results.md").read_text()
    alibi = md_rows(text)["positional=alibi"]
    assert alibi[1] == "2 (2 diverged)" and alibi[5] == "diverged on 2/4 seeds"
    mean, half = report.mean_ci([1.7 - 2.0, 1.81 - 2.1])  # paired over the seeds both finished
    assert alibi[4] == f"{mean:+.4f} ± {half:.4f} (2 of 4 seeds)"
    assert md_rows(text)["positional=rope"][5] == "worse"
    assert "4 of 4 runs finished" not in text and "10 of 12 runs finished, 2 diverged." in text
    assert "a better or worse that does not hold under Holm's correction across them" in text

    figures = []
    monkeypatch.setattr(runner, "val_curve", lambda run_dir: [(0, 3.0), (512, 2.0)])
    monkeypatch.setattr(plt, "close", figures.append)
    assert runner.plot(tmp_path, rows, "t")
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert "positional=alibi (n=2; diverged on 2/4 seeds)" in legend and "positional=rope (n=4)" in legend
    rows = rows_of(p, {"positional=sinusoidal": [2.0, 2.1], "positional=rope": [2.01, 2.12],
                       "positional=alibi": [DIVERGED, DIVERGED]})  # no seed to draw: the legend says why
    assert runner.plot(tmp_path, rows, "t")
    legend = [t.get_text() for t in figures[1].axes[0].get_legend().get_texts()]
    assert "positional=alibi: not drawn, diverged on 2/2 seeds" in legend


def test_differences_of_a_few_rounding_steps_are_within_noise_though_every_seed_agrees(write_recipe):
    """Naive and flash attention: the same maths, losses a float32 step or two apart on every seed. The
    interval of identical differences has no width; it is no evidence of a difference."""
    p = plan(Ablation(recipe=write_recipe(), vary={"model.attention": ["flash", "naive"]}))
    step = 2.0 ** -22  # a float32 step of a loss near 2.5
    rows = rows_of(p, {"attention=flash": [2.5, 2.6], "attention=naive": [2.5 - 3 * step, 2.6 - 3 * step]})
    assert md_rows(report.markdown(report.arm_stats(rows), 0.1))["attention=naive"][5] == "within noise"
    rows = rows_of(p, {"attention=flash": [2.5, 2.6], "attention=naive": [2.49, 2.59]})  # a real, constant gain
    assert md_rows(report.markdown(report.arm_stats(rows), 0.1))["attention=naive"][5] == "better"


def test_t_tests_p_values_match_tables_and_holms_adjustment_steps_down():
    # t = 4.303 with 2 degrees of freedom, 2.262 with 9: p = 0.05 (two-sided); t = 12.71 with 1: 0.05
    for diffs, df, t in (([1.0, 2.0, 3.0], 2, 4.3027), ([0.5, 1.5], 1, 12.7062)):
        mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
        shifted = [d - mean + t * sd / math.sqrt(len(diffs)) for d in diffs]  # mean moved to put t at the 5% point
        assert report.paired_p(shifted) == pytest.approx(0.05, abs=1e-4)
    assert report.t_cdf(50, 1) == pytest.approx(0.5 + math.atan(50) / math.pi, abs=1e-12)  # Cauchy: a heavy tail
    assert report.paired_p([0.01, 0.01, 0.01]) == 0.0 and report.paired_p([0.0, 0.0]) == 1.0
    assert report.paired_p([0.1]) is None
    assert report.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # ranked 1st, 3rd, 2nd
    assert report.holm([0.2, 0.001]) == pytest.approx([0.2, 0.002])


def test_a_verdict_that_does_not_survive_holms_correction_over_the_arms_says_so(write_recipe):
    """Five arms against one baseline at 95% each: one of them may come out "better" by chance."""
    p = plan(Ablation(recipe=write_recipe(model={"positional": "sinusoidal"}),
                      vary={"model.positional": ["sinusoidal", "rope", "alibi", "learned", "none"]}))
    base = [2.0, 2.1, 2.2]
    rows = rows_of(p, {"positional=sinusoidal": base,
                       "positional=rope": [1.7, 1.8, 1.9],  # 0.3 better on every seed: p = 0
                       "positional=alibi": [1.98, 2.07, 2.16],  # better at 95% alone (p 0.035), not among 4
                       "positional=learned": [2.01, 2.09, 2.23], "positional=none": [2.3, 2.1, 2.6]})
    assert report.paired_p([-0.02, -0.03, -0.04]) == pytest.approx(0.0353, abs=1e-3)
    verdicts = {arm: row[5] for arm, row in md_rows(report.markdown(report.arm_stats(rows), 0.1)).items()}
    assert verdicts == {"positional=sinusoidal": "baseline", "positional=rope": "better",
                        "positional=alibi": "better (not after Holm's correction for 4 arms)",
                        "positional=learned": "within noise", "positional=none": "within noise"}
    alone = rows_of(plan(Ablation(recipe=write_recipe(model={"positional": "sinusoidal"}),
                                  vary={"model.positional": ["sinusoidal", "alibi"]})),
                    {"positional=sinusoidal": base, "positional=alibi": [1.98, 2.07, 2.16]})
    assert md_rows(report.markdown(report.arm_stats(alone), 0.1))["positional=alibi"][5] == "better"


def test_a_run_recorded_as_finished_with_a_loss_of_nan_counts_as_diverged(tmp_path, write_recipe):
    """As an older gptkit recorded a run whose last update broke its weights: its NaN broke the report."""
    import gptkit.ablation.runner as runner

    p = plan(Ablation(recipe=write_recipe(), vary={"model.positional": ["sinusoidal", "rope"]}))
    rows = rows_of(p, {"positional=sinusoidal": [2.0, 2.1], "positional=rope": [float("nan"), float("nan")]})
    runner.write_reports(tmp_path, rows, 0.1)
    table = md_rows((tmp_path / "results.md").read_text())
    assert table["positional=rope"][1] == "0 (2 diverged)" and table["positional=rope"][5] == "diverged on 2/2 seeds"


def test_arms_that_did_not_run_or_failed_say_so(write_recipe):
    p = plan(Ablation(recipe=write_recipe(), vary={"model.positional": ["sinusoidal", "rope", "alibi"]}))
    broken = {"status": "failed", "reason": "ComponentError: positional 'alibi' is broken\nTraceback line"}
    rows = rows_of(p, {"positional=sinusoidal": [2.0, 2.1], "positional=rope": [None, None],
                       "positional=alibi": [broken, 2.0]})
    table = md_rows(report.markdown(report.arm_stats(rows), 0.1))
    assert table["positional=rope"][1:2] + table["positional=rope"][5:6] == ["0", "not run"]
    assert table["positional=alibi"][1] == "1 (1 failed)"
    assert table["positional=alibi"][5] == "failed on 1/2 seeds (ComponentError: positional 'alibi' is broken)"


def test_arms_on_unequal_terms_show_their_budgets_and_are_not_called_better(write_recipe):
    import gptkit.ablation.runner as runner

    p = plan(Ablation(recipe=write_recipe(train={"max_steps": 2}), vary={"train.max_steps": ["2", "4"]},
                      allow_unfair=True))
    plan_lines = runner.describe(p, 0.1, runner.datasets(p))
    assert "2 steps, 512 tokens" in plan_lines[0] and "4 steps, 1,024 tokens" in plan_lines[1]
    budget = lambda steps: {"steps": steps, "tokens": steps * 256}  # noqa: E731
    rows = rows_of(p, {"max_steps=2": [{**FINISHED, "final_val_loss": v, **budget(2)} for v in (3.0, 3.1)],
                       "max_steps=4": [{**FINISHED, "final_val_loss": v, **budget(4)} for v in (2.0, 2.05)]})
    text = report.markdown(report.arm_stats(rows), 0.1)
    assert "| steps | tokens" in text.replace("  ", "")
    longer = md_rows(text)["max_steps=4"]
    assert longer[5] == "better, not on equal terms (train.max_steps differ)" and longer[-2:] == ["4", "1,024"]
    same = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))
    *_, each, data = runner.describe(same, 0.1, runner.datasets(same))
    assert each == "Each run: 6 steps, 1,536 tokens"
    assert re.fullmatch(r"Data: 47 characters, 9,351 training and 1,038 validation tokens of data\.path .*corpus\.txt",
                        data), data  # said once, the same for both arms


def test_the_data_an_ablation_trains_on_is_in_its_plan_and_results(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    result = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", tmp_path / "abl",
                 "--set", "data.max_lines=40")
    said = r"[0-9]+ characters, [0-9,]+ training and [0-9,]+ validation tokens of data\.path \S+ \(its first 40 " \
        r"lines, data\.max_lines\)"
    assert result.exit_code == 0 and re.search(f"^Data: {said}$", result.output, re.M), result.output
    assert re.search(f" Data: {said}\\. ", (tmp_path / "abl" / "results.md").read_text())
    # --allow-unfair may vary the data: each arm's is said
    lines = cli("ablate", recipe, "--vary", "data.max_lines=40,50", "--seeds", "1", "--allow-unfair",
                "--out", tmp_path / "unfair").output
    assert re.search(r"^Data of baseline: 47 characters, 9,351 training .*corpus\.txt$", lines, re.M), lines
    assert re.search(r"^Data of max_lines=40: .*its first 40 lines", lines, re.M), lines
    assert re.search(r"^Data of max_lines=50: .*its first 50 lines", lines, re.M), lines
    assert "Data: differs between runs (see their summary.json)." in (tmp_path / "unfair" / "results.md").read_text()


def test_a_warm_up_longer_than_the_runs_is_said_once_in_the_plan(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1,
                                 "schedule": {"name": "cosine", "warmup_steps": 50}})
    result = cli("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "2", "--out", tmp_path / "abl")
    assert result.exit_code == 0, result.output
    assert result.output.count("warning: train.schedule (cosine) never reaches train.lr in 2 steps (at most 4% of "
                               "it): its warmup_steps (50) is longer than the run") == 1, result.output


def test_fewer_or_other_seeds_keep_the_seeds_run_earlier(cli, tmp_path, write_recipe):
    recipe = write_recipe(train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--out", out)

    def seeds_reported():
        with open(out / "results.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert all(r["status"] == "finished" for r in rows)
        return sorted(int(r["seed"]) for r in rows), yaml.safe_load((out / "ablation.yaml").read_text())["seeds"]

    assert cli(*args, "--seeds", "2").exit_code == 0
    fewer = cli(*args, "--seeds", "1")
    assert fewer.exit_code == 0 and "Also reported: 2 runs of seeds 1, which earlier commands ended" in fewer.output
    assert "2 of 2 runs finished earlier" in fewer.output and seeds_reported() == ([0, 0, 1, 1], [0, 1])
    assert md_rows((out / "results.md").read_text())["baseline"][1] == "2"
    other = cli(*args, "--set", "seed=7", "--seeds", "1")  # the same folder: the seed does not name it
    assert other.exit_code == 0 and "Also reported: 4 runs of seeds 0, 1" in other.output, other.output
    assert seeds_reported() == ([0, 0, 1, 1, 7, 7], [0, 1, 7])
    again = cli("ablate", out / "ablation.yaml", "--out", out)
    assert again.exit_code == 0 and "6 of 6 runs finished earlier: skipping them" in again.output, again.output


def test_an_arm_whose_component_fails_in_training_does_not_stop_the_others(cli, tmp_path, write_recipe,
                                                                           temporary_component):
    temporary_component("feedforward", "fails-late", breaks_after(2, how="raise"))
    recipe = write_recipe(model={"feedforward": "mlp"}, train={"max_steps": 4, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.feedforward=mlp,fails-late,swiglu", "--seeds", "2", "--out", out)
    first = cli(*args)
    assert first.exit_code == 2 and "Traceback" not in first.output, first.output
    assert "feedforward=fails-late, seed 0 failed: feedforward 'fails-late' from test is broken" in first.output
    assert first.output.splitlines()[-1].startswith("error: 2 of 6 runs failed (first: feedforward=fails-late, seed 0: "
                                                    "ComponentError: feedforward 'fails-late'")
    assert json.loads((out / "feedforward-swiglu" / "seed-1" / "summary.json").read_text())["status"] == "finished"
    summary = json.loads((out / "feedforward-fails-late" / "seed-0" / "summary.json").read_text())
    assert summary["status"] == "failed" and "out of ideas" in summary["reason"]
    row = md_rows((out / "results.md").read_text())["feedforward=fails-late"]
    assert row[1] == "0 (2 failed)" and row[5].startswith("failed on 2/2 seeds (ComponentError: ")
    assert "out of ideas" in row[5] and "second line" not in row[5]
    assert "4 of 6 runs finished, 2 failed." in (out / "results.md").read_text()
    again = cli(*args)  # a rerun trains them again: the component may have been fixed
    assert again.exit_code == 2 and "4 of 6 runs finished earlier: skipping them" in again.output
    assert "feedforward=fails-late, seed 1 failed" in again.output


def test_an_arm_that_runs_out_of_memory_does_not_stop_the_others(cli, tmp_path, write_recipe, temporary_component):
    temporary_component("feedforward", "hungry", breaks_after(0, how="oom"))  # before its first step: no run folder
    recipe = write_recipe(model={"feedforward": "mlp"}, train={"max_steps": 2, "eval_every": 2, "eval_batches": 1})
    out = tmp_path / "abl"
    result = cli("ablate", recipe, "--vary", "model.feedforward=mlp,hungry", "--seeds", "1", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "feedforward=hungry, seed 0 failed: out of memory on cpu at step 1" in result.output
    assert json.loads((out / "baseline" / "seed-0" / "summary.json").read_text())["status"] == "finished"
    row = md_rows((out / "results.md").read_text())["feedforward=hungry"]
    assert row[5].startswith("failed on 1/1 seeds (OutOfMemory: out of memory on cpu at step 1")


def test_a_full_disk_in_an_ablation_says_to_rerun_the_ablation(cli, tmp_path, write_recipe, monkeypatch):
    import gptkit.training.run as run_module

    def disk_full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(run_module, "save_checkpoint", disk_full)
    out = tmp_path / "abl"
    result = cli("ablate", write_recipe(train={"max_steps": 2}), "--vary", "model.norm=layernorm", "--seeds", "1",
                 "--out", out)
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    assert "No space left on device; no checkpoint was saved yet (the run will start over). Free some space and " \
           "rerun the same gptkit ablate command\n" in result.stderr and "--resume" not in result.output, result.output


def test_an_error_that_is_not_an_arms_stops_the_ablation_at_once(cli, tmp_path, write_recipe, monkeypatch):
    import gptkit.ablation.runner as runner
    from gptkit.errors import UserError

    calls = []

    def refused(*args, run_dir, **kwargs):
        calls.append(run_dir)
        raise UserError("cannot resume: the recipe changed")

    monkeypatch.setattr(runner, "train", refused)
    result = cli("ablate", write_recipe(), "--vary", "model.norm=layernorm", "--seeds", "2", "--out", tmp_path / "a")
    assert result.exit_code == 2 and "error: cannot resume: the recipe changed" in result.output and len(calls) == 1


def test_compare_tells_runs_on_other_texts_or_plugins_apart(cli, tmp_path, write_recipe, corpus):
    recipe = write_recipe(train={"max_steps": 2})
    for runs, text in (("a", corpus.read_text()), ("b", corpus.read_text()), ("c", corpus.read_text().upper())):
        corpus.write_text(text)
        assert cli("run", recipe, "--runs-dir", tmp_path / runs, "-q").exit_code == 0
    a, b, c = (next((tmp_path / runs).iterdir()) for runs in "abc")
    assert "The recipes, training texts, plugin versions, software and precision are identical." in \
        cli("compare", a, b).output
    other_text = cli("compare", a, c).output
    texts = md_rows(other_text.split("Final figures:")[0])["text SHA-256"][1:]
    assert "identical" not in other_text and len(set(texts)) == 2 and all(t.endswith("...") for t in texts)
    summary = json.loads((b / "summary.json").read_text())
    (b / "summary.json").write_text(json.dumps({**summary, "plugins": {"model.norm": "unitnorm from acme-norms 1.2"}}))
    plugins = md_rows(cli("compare", a, b).output.split("Final figures:")[0])["plugins"]
    assert plugins[1:] == ["none (built-in components only)", "model.norm: unitnorm from acme-norms 1.2"]
    # what a resumed run's earlier sessions trained with, too (an ablation would not pool it)
    (b / "summary.json").write_text(json.dumps({**summary, "precision_history": ["bf16 autocast"]}))
    rows = md_rows(cli("compare", a, b).output.split("Final figures:")[0])
    assert rows["precision"][1:] == ["fp32", "fp32 (earlier sessions: bf16 autocast)"], rows


def interrupted_ablation(cli, monkeypatch, args, step=3):
    """Run `args` (an ablate command), stopped by SIGTERM at training step `step` of its first run, after a
    checkpoint; returns that run's folder."""
    from conftest import stop_at

    with monkeypatch.context() as m:
        stop_at(m, "train_step", step)
        first = cli(*args)
    assert first.exit_code == 143, first.output
    run = next(p.parent for p in Path(args[args.index("--out") + 1]).glob("*/seed-*/checkpoint.pt"))
    assert json.loads((run / "summary.json").read_text())["status"] != "finished"
    return run


def test_a_run_of_an_ablation_is_resumed_by_the_ablation_not_alone(cli, tmp_path, write_recipe, monkeypatch):
    """`gptkit run RECIPE --resume` of one of its runs would train it on with the recipe file's budget, and the
    ablation would then refuse the run as another recipe's; named as the ablation's, with its command."""
    recipe = write_recipe(train={"max_steps": 4, "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    run = interrupted_ablation(cli, monkeypatch, args, step=2)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for alone in (("run", recipe, "--resume", run, "--set", "train.max_steps=8"), ("run", "--resume", run)):
        result = cli(*alone)
        assert result.exit_code == 2 and result.output == (
            f"error: --resume {run}: a run of the ablation in {out}, which resumes its runs itself: gptkit ablate "
            f"{out / 'ablation.yaml'} --out {out} (to train this run further alone, copy its folder out first)\n")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert cli(*args).exit_code == 0


@pytest.mark.parametrize("change", ["train.max_steps=4", "train.eval_batches=3"])
def test_an_unfinished_run_resumes_only_with_exactly_its_arms_recipe(cli, tmp_path, write_recipe, monkeypatch, change):
    recipe = write_recipe(train={"max_steps": 6, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    run = interrupted_ablation(cli, monkeypatch, args)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = cli(*args, "--set", change)  # its budget or evaluation: the run would not be the arm's
    assert changed.exit_code == 2 and "(resuming)" not in changed.output, changed.output
    assert (f"{run} was stopped with a different recipe ({change.split('=')[0]} differ); delete that run folder "
            f"(rm -r {run}), or pass --out with a new folder") in changed.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    again = cli(*args)
    assert again.exit_code == 0 and "(resuming)" in again.output, again.output


def test_another_ablation_in_the_same_folder_is_refused_before_anything_is_written(cli, tmp_path, write_recipe,
                                                                                    monkeypatch):
    recipe = write_recipe(train={"max_steps": 6, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    run = interrupted_ablation(cli, monkeypatch, (*args, "--set", "train.lr=0.01"))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = cli(*args, "--set", "train.lr=0.02")
    assert other.exit_code == 2, other.output
    assert f"{run} was stopped with a different recipe (train.lr differ)" in other.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # ablation.yaml, baseline.yaml too


def test_a_stopped_run_is_reported_as_far_as_it_got(cli, tmp_path, write_recipe, monkeypatch):
    from conftest import stop_at

    import gptkit.ablation.runner as runner

    recipe = write_recipe(train={"max_steps": 6, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", out)
    real_train, calls = runner.train, []

    def train(*a, **k):  # SIGTERM at step 3 of the second run, the arm's
        calls.append(Path(k["run_dir"]))
        with monkeypatch.context() as m:
            if len(calls) == 2:
                stop_at(m, "train_step", 3)
            return real_train(*a, **k)

    monkeypatch.setattr(runner, "train", train)
    first = cli(*args)
    assert first.exit_code == 143, first.output
    summary = json.loads((calls[1] / "summary.json").read_text())
    with open(out / "results.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["arm"] == "norm=layernorm")
    assert row["status"] == summary["status"] == "interrupted" and int(row["steps"]) == summary["steps"] > 0
    text = (out / "results.md").read_text()
    assert "1 of 2 runs finished, 1 interrupted." in text
    arm = md_rows(text)["norm=layernorm"]
    assert arm[1:3] == ["0 (1 interrupted)", "-"] and arm[5] == "in progress (1 interrupted)"  # no loss yet
    again = cli(*args)
    assert again.exit_code == 0 and "(resuming)" in again.output, again.output
    assert "2 of 2 runs finished." in (out / "results.md").read_text()


FLAKY = """
import torch
from gptkit.components import register
from gptkit.components.feedforward import MLP


@register("feedforward", "flaky")
class Flaky(MLP):
    def __init__(self, config, params):
        super().__init__(config, params)
        self.steps = 0

    def forward(self, x):
        self.steps += self.training and torch.is_grad_enabled()  # training steps
        if self.steps > 3:
            raise ValueError("out of ideas")
        return super().forward(x)
"""


def test_a_run_that_failed_after_a_checkpoint_trains_again_from_scratch_once_fixed(cli, tmp_path, write_recipe,
                                                                                   scratch_registries):
    (tmp_path / "mine.py").write_text(FLAKY)
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 6, "eval_every": 2, "eval_batches": 1,
                                                      "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.feedforward=flaky", "--seeds", "1", "--out", out)
    first = cli(*args)
    assert first.exit_code == 2 and "fix the component (or, for memory, the arm's sizes), then rerun the same command" in first.output, first.output
    run = out / "feedforward-flaky" / "seed-0"
    assert (run / "checkpoint.pt").is_file()  # made with the old code
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    (run / "stale.txt").write_text("from the failed run")
    (tmp_path / "mine.py").write_text(FLAKY.replace("self.steps > 3", "False"))  # fixed
    again = cli(*args)
    assert again.exit_code == 0, again.output
    assert "1 of 2 runs finished earlier" in again.output and "(resuming)" not in again.output
    assert not (run / "stale.txt").exists()  # its folder's old files went first
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(1) == 1  # one run, from its first step


def test_a_failed_run_trains_again_when_its_fix_changes_the_components_defaults(cli, tmp_path, write_recipe,
                                                                               scratch_registries):
    """The recipe stored with the failed run holds the component's old defaults: a fix may change them, add
    parameters or drop some, and the run is still its arm's; a parameter the recipe sets must still match."""
    from gptkit.ablation.runner import Refused, check_same_recipe
    from gptkit.recipe import load_recipe

    flaky = FLAKY.replace("from gptkit.components.feedforward import MLP",
                          "from gptkit.components.feedforward import MLP, FeedForwardParams\n\n\n"
                          "class FlakyParams(FeedForwardParams):\n    fail_after: int = 3\n    patience: int = 1\n")
    flaky = flaky.replace("class Flaky(MLP):\n", "class Flaky(MLP):\n    Params = FlakyParams\n\n")
    flaky = flaky.replace("self.steps > 3", "self.steps > self.params.fail_after")
    (tmp_path / "mine.py").write_text(flaky)
    recipe = write_recipe(imports=["mine.py"], train={"max_steps": 6, "checkpoint_every": 2})
    out = tmp_path / "abl"
    args = ("ablate", recipe, "--vary", "model.feedforward=flaky", "--seeds", "1", "--out", out)
    assert cli(*args).exit_code == 2
    run = out / "feedforward-flaky" / "seed-0"
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    fixed = flaky.replace("fail_after: int = 3\n    patience: int = 1", "fail_after: int = 100\n    warmup: int = 0")
    (tmp_path / "mine.py").write_text(fixed)
    again = cli(*args)
    assert again.exit_code == 0, again.output
    trained = yaml.safe_load((run / "recipe.yaml").read_text())["model"]["feedforward"]
    assert (trained["fail_after"], trained["warmup"], "patience" in trained) == (100, 0, False)
    set_by_hand = load_recipe(recipe, ["model.feedforward={name: flaky, fail_after: 50}", "seed=0"])
    with pytest.raises(Refused, match=r"failed with a different recipe \(model.feedforward.fail_after differ\)"):
        check_same_recipe(run, set_by_hand, "failed", anew=True)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_killed_runs_csv_row_says_interrupted_as_results_md_counts_it(write_recipe):
    arm = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["layernorm"]})).arms[1]
    rows = [report.RunRow(arm, 0, "a/seed-0", {"status": "running", "steps": 3}),  # kill -9: its summary says so
            report.RunRow(arm, 1, "a/seed-1", {"status": "finished", "steps": 6}),
            report.RunRow(arm, 2, "a/seed-2", None),
            report.RunRow(arm, 3, "a/seed-3", {**DIVERGED, "final_val_loss": 2.5})]  # its loss of before
    statuses = [r["status"] for r in csv.DictReader(io.StringIO(report.csv_text(rows)))]
    assert statuses == ["interrupted", "finished", "unfinished", "diverged"]


def test_an_arm_whose_loss_rose_far_above_its_best_says_so_beside_its_verdict(write_recipe):
    """A learning rate too high: seeds fall apart by different amounts, an interval too wide to call it worse."""
    p = plan(Ablation(recipe=write_recipe(), vary={"train.lr": ["1e-3", "30"]}))
    collapsed = [{**FINISHED, "final_val_loss": v, "best_val_loss": 4.17} for v in (5.0, 40.0, 600.0)]
    stats = {s.arm.label: s for s in report.arm_stats(rows_of(p, {"lr=0.001": [2.0, 2.1, 2.2], "lr=30.0": collapsed}))}
    # (5 + 40 + 600) / 3 / 4.17; all three seeds worse, by amounts too different for an interval to exclude 0
    assert stats["lr=30.0"].verdict == "within noise, though every seed was worse; final val loss 52x its best"
    assert stats["lr=0.001"].verdict == "baseline"
    for run in collapsed:  # recorded since: what a uniform guess over the vocabulary scores
        run["vocab_size"] = 65
    stats = {s.arm.label: s for s in report.arm_stats(rows_of(p, {"lr=0.001": [2.0, 2.1, 2.2], "lr=30.0": collapsed}))}
    assert stats["lr=30.0"].verdict.endswith("52x its best; final val loss above a uniform guess's (ln 65 = 4.17): it "
                                           "learned nothing")


def test_an_arm_that_changed_nothing_says_so(write_recipe):
    """A parameter that does not bind at these settings (a window as long as the block): the same bits."""
    p = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))

    def verdict(base, arm):
        return {s.arm.label: s for s in report.arm_stats(rows_of(p, {"norm=rmsnorm": base,
                                                                     "norm=layernorm": arm}))}["norm=layernorm"].verdict

    assert verdict([2.0, 2.1], [2.0, 2.1]) == ("within noise; the baseline's final val loss on every seed, to the last "
                                               "bit: the change did nothing here (the same arithmetic another way, "
                                               "or a window as long as the block, say)")
    assert verdict([2.0], [2.0]).startswith("n/a (needs 2 seeds); the baseline's final val loss on its seed, to the ")
    assert verdict([2.0, 2.1], [2.0, 2.1000001]) == "within noise"  # rounding apart: something changed


def test_seeds_that_all_went_one_way_are_said_only_from_three(write_recipe):
    p = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))

    def verdict(base, arm):
        return {s.arm.label: s for s in report.arm_stats(rows_of(p, {"norm=rmsnorm": base,
                                                                     "norm=layernorm": arm}))}["norm=layernorm"].verdict

    assert verdict([2.0, 2.1], [2.01, 2.4]) == "within noise"  # two alike by chance half the time
    assert verdict([2.0, 2.1, 2.2], [2.01, 2.4, 2.21]) == "within noise, though every seed was worse"
    assert verdict([2.0, 2.1, 2.2], [1.99, 1.8, 2.19]) == "within noise, though every seed was better"
    assert verdict([2.0, 2.1, 2.2], [2.01, 2.4, 2.19]) == "within noise"


def test_a_baseline_with_seeds_an_arm_lacks_is_said_beside_the_paired_difference(write_recipe):
    """Each mean covers its own seeds, the difference only those both finished: the cell says so."""
    p = plan(Ablation(recipe=write_recipe(), vary={"model.norm": ["rmsnorm", "layernorm"]}))
    stats = {s.arm.label: s for s in report.arm_stats(rows_of(p, {"norm=rmsnorm": [2.0, 2.1, 2.2, 2.8],
                                                                  "norm=layernorm": [2.01, 2.11, 2.21, None]}))}
    mean, half = report.mean_ci([0.01, 0.01, 0.01])
    assert report.diff_cell(stats["norm=layernorm"]) == f"{mean:+.4f} ± {half:.4f} (3 of 4 seeds)"


def test_running_out_of_memory_building_an_arm_stops_the_checks_there(cli, tmp_path, write_recipe, monkeypatch):
    import gptkit.ablation.runner as runner
    from gptkit.errors import OutOfMemory

    built = []
    real = runner.build_checked

    def build_checked(recipe, *args, **kwargs):
        built.append(recipe.model.norm.name)
        if recipe.model.norm.name == "layernorm":
            raise OutOfMemory("the model does not fit in memory on cpu")
        return real(recipe, *args, **kwargs)

    monkeypatch.setattr(runner, "build_checked", build_checked)
    result = cli("ablate", write_recipe(), "--vary", "model.norm=layernorm,rmsnorm", "--vary", "model.n_layer=1,2",
                 "--out", tmp_path / "abl")
    assert result.exit_code == 2 and result.output.startswith("error: arm norm=layernorm n_layer=1: the model does not "
                                                              "fit in memory on cpu\n"), result.output
    assert built.count("layernorm") == 1  # not every other arm in turn


def test_the_baseline_is_titled_with_its_values_of_what_varies(write_recipe):
    """A --set baseline shows in the reports: its component's parameters too, when it sets any."""
    ablation = Ablation(recipe=Path(write_recipe()), vary={"model.positional": ["rope", "alibi"], "train.lr": ["0.003"]},
                        overrides=["model.positional={name: rope, base: 500}"], mode="one-at-a-time")
    assert [arm.title for arm in plan(ablation).arms] == [
        "baseline (positional={name: rope, base: 500.0} lr=0.001)", "positional=alibi", "lr=0.003"]


def test_varying_a_components_name_is_varying_the_component(write_recipe):
    """--vary train.optimizer.name=... and --vary train.optimizer=... are one ablation: the same arms, labels,
    folders and digest, so that either spelling resumes the other's runs."""
    path = Path(write_recipe())
    by_name, by_component = (plan(Ablation(recipe=path, vary={key: ["muon", "adamw"]}))
                             for key in ("train.optimizer.name", "train.optimizer"))
    assert [(a.title, a.slug) for a in by_name.arms] == [(a.title, a.slug) for a in by_component.arms] == [
        ("optimizer=adamw (baseline)", "baseline"), ("optimizer=muon", "optimizer-muon")]
    assert by_name.digest == by_component.digest


def test_ablate_takes_one_plan_from_the_command_line(cli, tmp_path, write_recipe):
    abl = tmp_path / "abl.yaml"
    abl.write_text(f"recipe: {write_recipe(train={'max_steps': 2})}\nmode: grid\nseeds: 1\nvary:\n"
                   "  model.norm: [rmsnorm, layernorm]\n  model.positional: [rope, learned]\n")
    both = cli("ablate", abl, "--grid", "--one-at-a-time")
    assert both.exit_code == 2 and both.output == "error: --grid and --one-at-a-time: give one of them (every " \
        "combination of the varied values, or one field changed at a time)\n", both.output
    one = cli("ablate", abl, "--one-at-a-time", "--out", tmp_path / "one")  # over the file's mode
    assert one.exit_code == 0 and "4 arms × 1 seed (seeds 0) = 4 runs, one-at-a-time:\n  baseline (norm=rmsnorm " \
        "positional=sinusoidal)" in one.output, one.output


def test_a_signal_in_a_runs_final_sample_says_how_to_go_on_with_the_ablation(cli, tmp_path, write_recipe,
                                                                            monkeypatch):
    """The run is finished (not resumable), but the ablation has runs left: its own command goes on."""
    import gptkit.training.run

    def signalled(*args, on_text, **kwargs):
        on_text("KING:")
        on_text("abc")
        os.kill(os.getpid(), signal.SIGTERM)  # a real signal, handled as the process would handle it

    monkeypatch.setattr(gptkit.training.run, "sample", signalled)
    result = cli("ablate", write_recipe(sample={"prompt": "KING:", "tokens": 20}), "--vary", "model.norm=layernorm",
                 "--seeds", "2", "--out", tmp_path / "abl")
    assert result.exit_code == 143, result.output
    assert "its sample cut short at 3 of 20 characters, in samples.txt" in result.output
    assert "(continue: rerun the same gptkit ablate command)" in result.output, result.output
