"""Using gptkit from Python: wrong arguments are one clear error, and a call leaves the caller's objects and
random state as they were."""

import dataclasses
import importlib
import json
import os
import pickle
import pkgutil
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import gptkit
from gptkit import GPTConfig, build_model, load_model, load_recipe, train, train_model
from gptkit.conformance import CONFIG, assert_conformant, check_component, tiny_model
from gptkit.data.vocab import Vocab
from gptkit.errors import RunStopped, UserError
from gptkit.recipe import RecipeError
from gptkit.recipe.components import RecipeIssue
from gptkit.registry import RegistryError, registry
from gptkit.training.checkpoint import load_checkpoint
from gptkit.sampling import generate, sample

VOCAB = Vocab([chr(65 + i) for i in range(CONFIG.vocab_size)])


# ---- a refused assignment leaves the recipe as it was -------------------------------------------
@pytest.mark.parametrize("section, key, value", [
    ("model", "n_head", 3),  # refused by the section's own validator: n_embd 32 is not divisible by 3
    ("model", "n_embd", 30),
    ("model", "positional", {"name": "rope", "base": -1}),
    ("model", "n_layer", 0),  # refused by the field
    ("train", "lr", -1.0),
    ("data", "val_fraction", 1.0),
    ("sample", "top_k", 0),
])
def test_a_refused_assignment_leaves_the_section_unchanged(write_recipe, section, key, value):
    recipe = load_recipe(write_recipe())
    part = getattr(recipe, section)
    before, fields_set = recipe.to_dict(), set(part.model_fields_set)
    with pytest.raises(ValidationError):
        setattr(part, key, value)
    assert recipe.to_dict() == before and part.model_fields_set == fields_set


def test_an_accepted_assignment_still_takes_effect(write_recipe):
    recipe = load_recipe(write_recipe())
    recipe.model.n_head = 8
    assert recipe.model.n_head == 8 and "n_head" in recipe.model.model_fields_set
    with pytest.raises(ValidationError):
        recipe.model.n_head = 3
    assert recipe.model.n_head == 8


# ---- generate and sample check their arguments ----------------------------------------------------
@pytest.mark.parametrize("kwargs, error, message", [
    ({"temperature": -0.5}, ValueError, r"temperature must be a finite number >= 0 \(0: the likeliest character\), got -0.5"),
    ({"temperature": -1.0}, ValueError, "temperature must be a finite number >= 0"),
    ({"temperature": "hot"}, ValueError, r"temperature must be a finite number >= 0 \(0: the likeliest character\), got 'hot'"),
    ({"top_k": 0}, ValueError, "top_k must be None .* got 0"),
    ({"top_k": -1}, ValueError, "top_k must be None .* got -1"),
    ({"top_k": True}, ValueError, "top_k must be None .* got True"),
    ({"top_k": 2.5}, ValueError, "top_k must be None .* got 2.5"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be a whole number from 0 to .*, got -1"),
    ({"max_new_tokens": 2.0}, ValueError, "max_new_tokens must be a whole number"),
    ({"idx": torch.tensor([1, 2])}, TypeError, "idx must be a 2-D integer tensor .* got a 1-D torch.int64 tensor"),
    ({"idx": [[1, 2]]}, TypeError, "idx must be a 2-D integer tensor .* got list"),
    ({"idx": torch.ones(1, 2)}, TypeError, "got a 2-D torch.float32 tensor"),
    ({"generator": 123}, TypeError, r"^generator must be a torch.Generator \(e.g. torch.Generator\(\).manual_seed\(0\)\) "
                                    "or None, got int$"),
    ({"model": "model.pt"}, TypeError, r"^model must be a GPT \(train_model's or load_model's first value\), got str$"),
])
def test_generate_refuses_arguments_it_cannot_use(kwargs, error, message):
    args = {"model": tiny_model().eval(), "idx": torch.tensor([[1, 2]]), "max_new_tokens": 3, "temperature": 1.0,
            "top_k": None, **kwargs}
    with pytest.raises(error, match=message):
        generate(**args)


def test_sample_refuses_a_bool_top_k():
    with pytest.raises(ValueError, match="top_k must be None"):
        sample(tiny_model(), VOCAB, "A", 3, top_k=True)


@pytest.mark.parametrize("whole, real", [(np.int64(3), np.float32(0.5)), (torch.tensor(3), torch.tensor(0.5))],
                         ids=["numpy", "tensor"])
def test_numbers_of_numpy_and_torch_types_are_taken(whole, real):
    model = tiny_model()
    text = sample(model, VOCAB, "A", tokens=whole, temperature=real, top_k=whole, seed=whole)
    assert text == sample(model, VOCAB, "A", tokens=3, temperature=0.5, top_k=3, seed=3) and len(text) == 4
    out = generate(model.eval(), torch.tensor([[1]]), whole, real, whole, torch.Generator().manual_seed(0))
    assert out.shape == (1, 4)


# ---- the wrong kind of object is one clear TypeError ------------------------------------------------
def test_train_takes_a_recipe_not_its_path(write_recipe):
    with pytest.raises(TypeError, match=r"^train takes a Recipe, got str: train\(load_recipe\(path\)\)"):
        train(str(write_recipe()))


@pytest.mark.parametrize("what", ["recipe", "config"])
def test_build_model_takes_a_recipes_model_section(write_recipe, what):
    recipe = load_recipe(write_recipe())
    given = recipe if what == "recipe" else GPTConfig(30, 16, 1, 2, 8, 0.0)
    with pytest.raises(TypeError, match=r"build_model takes a recipe's model section, got "
                                        rf"{type(given).__name__}: build_model\(recipe.model, vocab_size\)"):
        build_model(given, 30)


def test_train_model_takes_a_path_a_recipe_or_a_dict(tmp_path):
    with pytest.raises(TypeError, match="^train_model takes a recipe file's path, a Recipe or a dict, got list"):
        train_model([{"name": "tiny"}], runs_dir=tmp_path / "runs")


def test_train_model_takes_a_recipes_contents_as_validate_does(tmp_path, write_recipe, monkeypatch, scratch_registries):
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from gptkit.components import Norm, register

        @register("norm", "dictnorm")
        class DictNorm(Norm):
            def forward(self, x):
                return x
    """))
    contents = yaml.safe_load(write_recipe().read_text())
    contents.update(imports=["mine.py"], data={"path": "corpus.txt"})  # relative to the working directory
    contents["model"]["norm"] = "dictnorm"
    before = json.dumps(contents)
    monkeypatch.chdir(tmp_path)
    model, _ = train_model(contents, overrides=["train.max_steps=1"], runs_dir=tmp_path / "runs", quiet=True)
    assert type(model.transformer.ln_f).__name__ == "DictNorm" and json.dumps(contents) == before
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["steps"] == 1
    with pytest.raises(RecipeError, match=r"^recipe: train.lr: "):
        train_model({**contents, "train": {"lr": -1}}, runs_dir=tmp_path / "runs")


def test_train_model_trains_a_recipe_object_with_overrides_and_leaves_it_as_it_was(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe())
    before = recipe.to_dict()
    save = tmp_path / "model.pt"
    model, dataset = train_model(recipe, epochs=2, overrides=["train.max_steps=3", "model.n_layer=1"], save_path=save,
                                 runs_dir=tmp_path / "runs", quiet=True)
    assert recipe.to_dict() == before
    assert len(model.transformer.h) == 1
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["status"] == "finished"
    _, saved, _ = load_model(save)
    assert saved.train.epochs == 2 and saved.train.max_steps == 3 and saved.model.n_layer == 1


@pytest.mark.parametrize("loaded", [True, False], ids=["recipe-object", "recipe-file"])
def test_train_model_names_a_bad_override_as_given(tmp_path, write_recipe, loaded):
    recipe = load_recipe(write_recipe()) if loaded else write_recipe()
    with pytest.raises(RecipeError, match=r"^overrides 'train.lr=-1': train.lr: "):  # not a --set never typed
        train_model(recipe, overrides=["train.lr=-1"], runs_dir=tmp_path / "runs")


def test_train_model_data_path_of_a_recipe_object_is_the_users_text_not_a_corpus_to_create(tmp_path, write_recipe,
                                                                                           corpus):
    recipe = load_recipe(write_recipe(data={"path": str(corpus), "corpus": "shakespeare"}))
    typo = tmp_path / "corpsu.txt"
    with pytest.raises(UserError, match="not found"):
        train_model(recipe, data_path=typo, runs_dir=tmp_path / "runs", quiet=True)
    assert not typo.exists()


# ---- load_model: a device that is not there, and a file that is not a checkpoint ------------------
@pytest.mark.parametrize("device", ["cuda", torch.device("cuda", 0)], ids=["str", "torch.device"])
def test_load_model_on_a_missing_gpu_is_a_user_error(tmp_path, device, no_gpu):
    with pytest.raises(UserError, match="load_model.s device: cuda.* was asked for, but no such CUDA device is"):
        load_model(tmp_path, device=device)


def test_load_model_of_a_recipe_says_it_is_not_a_checkpoint(write_recipe):
    recipe = write_recipe()
    with pytest.raises(UserError, match=rf"^{recipe} is a text file, not a gptkit checkpoint; give a run folder"):
        load_model(recipe)


def test_train_takes_its_options_by_keyword_only(tmp_path, write_recipe):
    with pytest.raises(TypeError, match="positional"):  # a run folder given third was `quiet`: a new run started
        train(load_recipe(write_recipe()), tmp_path / "runs", tmp_path / "runs" / "earlier")


def test_train_refuses_folders_at_odds_before_anything_is_written(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe(train={"max_steps": 2}))
    done = train(recipe, run_dir=tmp_path / "done", quiet=True).run_dir
    before = (done / "checkpoint.pt").read_bytes()
    recipe.model.n_embd = 64  # another run: it must not overwrite the finished one
    with pytest.raises(UserError, match=rf"^run_dir='{done}' holds a run already; resume it with resume='{done}'"):
        train(recipe, run_dir=done, quiet=True)
    with pytest.raises(UserError, match="a resumed run goes on in its own folder; give one of them"):
        train(recipe, resume=done, run_dir=tmp_path / "other", quiet=True)
    assert (done / "checkpoint.pt").read_bytes() == before and not (tmp_path / "other").exists()
    for name in ("runs_dir", "resume", "run_dir"):
        with pytest.raises(TypeError, match=f"^{name} must be a path"):
            train(recipe, **{"runs_dir": tmp_path, name: 5})


@pytest.mark.parametrize("seed", ["1", 1.5, True, 2**70])
def test_sample_names_a_seed_no_generator_takes(seed):
    model = tiny_model(CONFIG).eval()
    with pytest.raises(ValueError, match="^seed must be None"):
        sample(model, Vocab([chr(97 + i) for i in range(CONFIG.vocab_size)]), "a", tokens=2, seed=seed)


def test_arguments_of_the_wrong_kind_are_named(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe())
    with pytest.raises(TypeError, match="^quiet must be True or False, got 'yes'"):
        train(recipe, runs_dir=tmp_path, quiet="yes")
    for vocab_size in ("65", 0, True):
        with pytest.raises(ValueError, match="^vocab_size must be a whole number >= 1"):
            build_model(recipe.model, vocab_size)
    assert build_model(recipe.model, np.int64(5)).config.vocab_size == 5
    with pytest.raises(TypeError, match="^vocab must be the model's Vocab"):
        sample(tiny_model(CONFIG).eval(), ["a", "b"], "a", tokens=2)
    assert not tmp_path.joinpath("runs").exists()


def test_check_component_takes_a_gpt_config():
    with pytest.raises(TypeError, match="^config must be a GPTConfig"):
        check_component("norm", "rmsnorm", config={"n_embd": 16})


# ---- the caller's random state is left as it was ----------------------------------------------------
def test_train_leaves_the_callers_random_state(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe(train={"max_steps": 2}))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = train(recipe, runs_dir=tmp_path / "runs", quiet=True)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)  # training seeds itself: the caller's state does not change the run
    second = train(recipe, runs_dir=tmp_path / "runs", quiet=True)
    assert second.summary["final_train_loss"] == first.summary["final_train_loss"]


def test_load_model_leaves_the_callers_random_state(tmp_path, write_recipe):
    run = train(load_recipe(write_recipe(train={"max_steps": 1})), runs_dir=tmp_path / "runs", quiet=True).run_dir
    torch.manual_seed(123)
    state = torch.get_rng_state()
    load_model(run)  # its initial weights, drawn and then overwritten by the checkpoint's, draw nothing of the caller's
    assert torch.equal(torch.get_rng_state(), state)


def test_conformance_checks_leave_the_callers_random_state():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert_conformant("norm", "layernorm")
    assert torch.equal(torch.get_rng_state(), state)


# ---- an unknown component is the registry's error -----------------------------------------------
@pytest.mark.parametrize("given", ["rmsnrom", {"name": "rmsnrom"}], ids=["name", "mapping"])
@pytest.mark.parametrize("check", [check_component, assert_conformant])
def test_checking_an_unknown_component_is_the_registrys_error(given, check):
    with pytest.raises(RegistryError, match=r"^unknown norm 'rmsnrom' \(did you mean 'rmsnorm'\?\)\. Available: "):
        check("norm", given)


def test_load_recipe_takes_a_path_not_a_recipe(write_recipe):
    recipe = load_recipe(write_recipe())
    with pytest.raises(TypeError, match=r"load_recipe takes a recipe file's path, got Recipe; .*train_model\(recipe"):
        load_recipe(recipe, ["train.lr=0.1"])


def test_train_model_checks_save_path_before_training(tmp_path, write_recipe, corpus):
    (tmp_path / "afile").write_text("x")
    recipe = write_recipe()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(recipe.read_text())
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"PK")
    (tmp_path / "run" / "summary.json").write_text("{}")
    os.mkfifo(tmp_path / "fifo")  # not read (it would block): refused as any other file
    for path, message in [
        (tmp_path, f"save_path {tmp_path} is a folder; give a file name"),
        (tmp_path / "afile" / "m.pt", f"cannot be written: {tmp_path / 'afile'} is a file"),
        (recipe, f"save_path {recipe} exists and is not a model saved by train_model, and would be overwritten"),
        (corpus, f"save_path {corpus} is the recipe's data.path, which training reads"),  # the text it trains on
        (tmp_path / "run" / "checkpoint.pt", f"is the checkpoint of the run in {tmp_path / 'run'}, which gptkit run "
                                             "--resume goes on from"),
        (tmp_path / "fifo", f"save_path {tmp_path / 'fifo'} exists and is not a model saved by train_model"),
    ]:
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(UserError) as e:
            train_model(recipe, save_path=path, runs_dir=tmp_path / "runs", quiet=True)
        assert message in str(e.value) and (before is None or path.read_bytes() == before)
    assert not (tmp_path / "runs").exists()  # nothing was trained


def test_train_model_says_where_the_run_is_when_save_path_cannot_be_written_after_training(tmp_path, write_recipe,
                                                                                          monkeypatch):
    import errno

    import gptkit.api as api

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(api, "save_checkpoint", full)
    with pytest.raises(UserError) as e:
        train_model(write_recipe(), save_path=tmp_path / "model.pt", runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert str(e.value) == (f"save_path {tmp_path / 'model.pt'} could not be written (No space left on device); the run "
                            f"finished and is saved in {run}: load_model({str(run)!r}) loads it")


def test_train_model_saves_over_a_model_it_saved_before(tmp_path, write_recipe):
    (tmp_path / "recipe.yaml").write_text(write_recipe().read_text())  # a project's folder, not a run's
    save = tmp_path / "checkpoint.pt"
    for steps in (1, 2):
        train_model(write_recipe(), overrides=[f"train.max_steps={steps}"], save_path=save, runs_dir=tmp_path / "runs",
                    quiet=True)
    assert load_checkpoint(save)["step"] == 2


@pytest.mark.parametrize("call, message", [
    (lambda r, t: train_model(r, data_path=5), "data_path must be a path (a str or Path), got int"),
    (lambda r, t: train_model(r, save_path=3), "save_path must be a path (a str or Path), got int"),
    (lambda r, t: load_model(None), "load_model's path must be a path (a str or Path), got NoneType"),
    (lambda r, t: registry(3), "a component kind is a name, e.g. 'attention' (kinds(): "),
    (lambda r, t: registry("norm").get(None), "a component's name is a string (norm: "),
    (lambda r, t: assert_conformant(3, "x"), "a component kind is a name, e.g. 'attention'"),
])
def test_an_argument_of_the_wrong_type_is_named(write_recipe, tmp_path, call, message):
    with pytest.raises(TypeError) as e:
        call(write_recipe(), tmp_path)
    assert str(e.value).startswith(message), e.value


def test_train_into_a_run_dir_that_is_a_file_is_refused(write_recipe, tmp_path):
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UserError, match=rf"^run_dir='{tmp_path}/t.txt' is a file, not a folder; give a folder"):
        train(load_recipe(write_recipe()), run_dir=tmp_path / "t.txt", quiet=True)


@pytest.mark.parametrize("kwargs, named", [({"epochs": 0.5}, "epochs=0.5"), ({"epochs": True}, "epochs=True"),
                                           ({"data_path": "/no/such.txt"}, "data_path='/no/such.txt': file not found")])
def test_train_model_errors_name_its_own_arguments(write_recipe, kwargs, named):
    with pytest.raises(UserError) as e:
        train_model(write_recipe(), **kwargs)
    assert str(e.value).startswith(named) and "--set" not in str(e.value), e.value


def test_train_model_names_the_override_that_does_not_fit_the_data(tmp_path, write_recipe):
    with pytest.raises(UserError, match=r"^overrides 'train.batch_size=100000': train.batch_size 100000 is larger"):
        train_model(write_recipe(), overrides=["train.batch_size=100000"], runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_train_model_names_the_override_that_asked_for_a_missing_gpu(tmp_path, write_recipe, no_gpu):
    with pytest.raises(UserError, match=r"^overrides 'train.device=cuda': train.device: cuda was asked for, but no such"):
        train_model(write_recipe(), overrides=["train.device=cuda"], runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_errors_name_the_arguments_given_not_command_line_flags(tmp_path, write_recipe, cli):
    afile, path = tmp_path / "afile", write_recipe()
    afile.write_text("x")
    with pytest.raises(UserError, match=r"^cannot create a run folder in .*; pass a writable folder as runs_dir$"):
        train_model(path, runs_dir=afile, quiet=True)
    result = cli("run", path, "--runs-dir", afile)  # the command line names its flags, as before
    assert result.exit_code == 2 and result.output.endswith("; pass --runs-dir with a writable folder\n"), result.output
    with pytest.raises(UserError) as e:
        train(load_recipe(path), resume=afile, quiet=True)
    assert str(e.value) == (f"resume='{afile}': not a folder; give a run folder such as runs/NAME-YYYYmmdd-HHMMSS, "
                            "or resume='auto' with a recipe")
    with pytest.raises(RecipeError, match=r"^overrides 'train.lrr=1': train.lrr: unknown key"):
        load_recipe(path, ["train.lrr=1"])
    with pytest.raises(RecipeError) as e:
        train_model(path, overrides=["train.lr"])
    assert str(e.value) == ("overrides 'train.lr': expected KEY=VALUE with a dotted key, "
                            "e.g. overrides=['train.lr=3e-4']")
    with pytest.raises(UserError) as e:
        load_recipe(path, ["sample.prompt=a: b: c"])
    assert str(e.value) == ("overrides 'sample.prompt=a: b: c': not valid YAML: mapping values are not allowed here "
                            "(a value containing ': ' or ending in ':' must be quoted: "
                            """overrides=['sample.prompt="a: b: c"'])""")
    assert load_recipe(path, ['sample.prompt="a: b: c"']).sample.prompt == "a: b: c"  # the fix it gives
    with pytest.raises(UserError) as e:  # written with "" by repr: still the one override, with no line
        load_recipe(path, ["sample.prompt=it's: b: c"])
    assert str(e.value) == ("""overrides "sample.prompt=it's: b: c": not valid YAML: mapping values are not allowed """
                            """here (a value containing ': ' or ending in ':' must be quoted: """
                            """overrides=['sample.prompt="it\\'s: b: c"'])""")
    assert load_recipe(path, ['sample.prompt="it\'s: b: c"']).sample.prompt == "it's: b: c"
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["sample.prompt=5"])
    assert str(e.value) == ("overrides 'sample.prompt=5': sample.prompt: Input should be a valid string (got 5) "
                            """(YAML read 5 as a number; quote it: overrides=['sample.prompt="5"'])""")
    assert load_recipe(path, ['sample.prompt="5"']).sample.prompt == "5"


def test_generate_runs_in_evaluation_mode_and_leaves_the_mode_as_it_was():
    torch.manual_seed(0)
    model = tiny_model(dataclasses.replace(CONFIG, dropout=0.5))  # in training mode, as build_model returns it
    idx = torch.zeros(1, 1, dtype=torch.long)
    cached, recomputed = (generate(model, idx, 30, generator=torch.Generator().manual_seed(0), use_cache=c)
                          for c in (True, False))
    assert torch.equal(cached, recomputed) and model.training


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64, torch.uint16, torch.uint32])
def test_the_model_takes_token_ids_of_any_integer_type_as_a_dataset_holds_them(dtype):
    torch.manual_seed(0)
    model = tiny_model(CONFIG).eval()
    ids = torch.randint(CONFIG.vocab_size, (2, 9))
    logits, loss = model(ids[:, :-1].to(dtype), ids[:, 1:].to(dtype))
    expected_logits, expected_loss = model(ids[:, :-1], ids[:, 1:])
    assert torch.equal(logits, expected_logits) and torch.equal(loss, expected_loss)


def test_register_without_a_name_is_an_error(scratch_registries):
    from gptkit.components import Norm
    from gptkit.registry import registry

    with pytest.raises(TypeError, match=r"register takes the name first, e.g. @registry\('norm'\).register"):
        @registry("norm").register
        class Mine(Norm):
            def forward(self, x):
                return x


@pytest.mark.parametrize("notebook", [True, False], ids=["notebook", "script"])
def test_a_class_renamed_in_a_notebook_replaces_the_one_registered_under_its_name(scratch_registries, monkeypatch,
                                                                                 notebook):
    import builtins

    from gptkit.components import Norm
    from gptkit.registry import registry

    def cell(class_name):  # a class defined in a notebook cell, or a script: module __main__
        cls = type(class_name, (Norm,), {"forward": lambda self, x: x, "__module__": "__main__"})
        return registry("norm").register("cellnorm", cls)

    if notebook:
        monkeypatch.setattr(builtins, "__IPYTHON__", True, raising=False)
    cell("First")
    if notebook:
        renamed = cell("Second")
        assert registry("norm").get("cellnorm") is renamed
    else:  # two classes under one name in a script: a mistake
        with pytest.raises(RegistryError, match="norm 'cellnorm' is registered twice: First by .* and Second by"):
            cell("Second")


def test_load_model_gives_the_recipe_load_recipe_gives(tmp_path, write_recipe):
    path = write_recipe(train={"max_steps": 1})
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    _, recipe, _ = load_model(str(run))
    assert recipe == load_recipe(path)  # its training components' parameters too, e.g. AdamWParams


def _subclasses(cls: type) -> list[type]:
    return [cls] + [c for sub in cls.__subclasses__() for c in _subclasses(sub)]


for _module in pkgutil.walk_packages(gptkit.__path__, "gptkit."):  # every error class there is
    if not _module.name.endswith("__main__"):  # which would run the command line
        importlib.import_module(_module.name)
# RecipeIssue is no UserError, but BrokenParams is both
ERRORS = {c for root in (UserError, RunStopped, RecipeIssue) for c in _subclasses(root)
          if c.__module__.partition(".")[0] == "gptkit"}
ARGS = {  # each class's constructor arguments: a class without a case fails the test
    "UserError": ("stopped",), "ComponentError": ("stopped",), "OutOfMemory": ("stopped",), "RunBusy": ("stopped",),
    "RegistryError": ("stopped",), "YAMLError": ("stopped",), "RecipeError": ("stopped",), "BrokenParams": ("stopped",),
    "RecipeIssue": ([(("a", 0), "stopped")], (("b",),)), "SizeError": ("n_embd", 5, "stopped"),
    "Refused": (Path("runs/x"), "is stopped", "remove it"),
    "RunStopped": ("stopped",), "Interrupted": (2, "stopped"), "RunFailed": ("stopped",), "Diverged": ("stopped",),
    "CheckpointError": ("stopped",), "PeerFailed": (3,), "PeerLost": ("stopped",), "BenchFailed": ("stopped",),
    "IntegerTooLong": ("r.yaml:1", ("seed",), "7" * 5000),
}


@pytest.mark.parametrize("cls", sorted(ERRORS, key=lambda c: c.__name__), ids=lambda c: c.__name__)
def test_errors_survive_pickling_with_their_attributes(tmp_path, cls):
    """As a run stopped in a multiprocessing or joblib worker reports back."""
    assert cls.__name__ in ARGS, f"give {cls.__module__}.{cls.__name__}'s constructor arguments in ARGS"
    e = cls(*ARGS[cls.__name__])
    e.run_dir, e.every_rank = tmp_path, True  # as train, and a torchrun rank, set them
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is cls and str(back) == str(e) and back.args == e.args and vars(back) == vars(e)
    assert getattr(back, "exit_code", None) == getattr(e, "exit_code", None)


def test_errors_and_the_vocabulary_are_exported():
    from gptkit.errors import Diverged, Interrupted

    assert (gptkit.Interrupted, gptkit.Diverged, gptkit.RunStopped, gptkit.Vocab) == (Interrupted, Diverged,
                                                                                     RunStopped, Vocab)


def test_a_python_object_where_a_path_goes_is_not_blamed_on_yaml(tmp_path):
    with pytest.raises(UserError) as e:
        train_model({"name": "x", "data": {"path": object()}}, runs_dir=tmp_path / "runs")
    assert str(e.value).endswith(") (give a str)") and "YAML" not in str(e.value), str(e.value)


@pytest.mark.parametrize("notebook", [
    lambda: torch.set_default_dtype(torch.float64),
    lambda: torch.set_grad_enabled(False),
    lambda: torch.set_default_device("meta"),
])
def test_training_and_loading_ignore_torch_defaults_a_notebook_changed(tmp_path, write_recipe, notebook):
    """float32 weights (the precision is the recipe's), gradients on, tensors built on the CPU: as in a
    fresh process. The caller's defaults are theirs again afterwards."""
    reference = train_model(write_recipe(), runs_dir=tmp_path / "ref", quiet=True)[0]
    dtype, grad = torch.get_default_dtype(), torch.is_grad_enabled()
    notebook()
    try:
        changed = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_default_device())
        model = train_model(write_recipe(), runs_dir=tmp_path / "runs", quiet=True)[0]
        (run,) = (tmp_path / "runs").iterdir()
        loaded = load_model(run)[0]
        assert (torch.get_default_dtype(), torch.is_grad_enabled(), torch.get_default_device()) == changed
    finally:
        torch.set_default_dtype(dtype), torch.set_grad_enabled(grad), torch.set_default_device(None)  # (no mode)
    for m in (model, loaded):
        assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in m.parameters())
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), reference.state_dict().values()))


def test_training_and_loading_inside_a_notebooks_autocast_block_are_as_outside_it(tmp_path, write_recipe):
    """The precision is train.precision's alone: an autocast around the call (bf16 on a CPU) changes nothing,
    and no built-in is blamed for the dtype it returns."""
    reference = train_model(write_recipe(), runs_dir=tmp_path / "ref", quiet=True)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model = train_model(write_recipe(), runs_dir=tmp_path / "runs", quiet=True)[0]
        (run,) = (tmp_path / "runs").iterdir()
        loaded = load_model(run)[0]
        assert torch.is_autocast_enabled("cpu")  # the caller's again
    for m in (model, loaded):
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), reference.state_dict().values()))


def test_train_model_refuses_a_save_path_that_is_what_training_reads(tmp_path, write_recipe):
    text = tmp_path / "made.txt"  # a corpus would make it, then the save would overwrite it
    with pytest.raises(UserError, match=f"^save_path {text} is the recipe's data.path, which training reads; give "
                                        "another file name"):
        train_model(write_recipe(), save_path=text, overrides=[f"data.path={text}", "data.corpus=shakespeare"],
                    runs_dir=tmp_path / "runs", quiet=True)
    assert not text.exists() and not (tmp_path / "runs").exists()


def test_paths_given_to_the_python_api_may_start_with_the_home_folder(tmp_path, write_recipe, corpus, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    (home / "r.yaml").write_text(Path(write_recipe(train={"max_steps": 1})).read_text())
    (home / corpus.name).write_text(corpus.read_text())
    train_model("~/r.yaml", data_path="~/" + corpus.name, save_path="~/model.pt", runs_dir="~/runs", quiet=True)
    assert (home / "model.pt").is_file() and load_model("~/model.pt")[0] is not None
    (run,) = (home / "runs").iterdir()
    recipe = load_recipe("~/r.yaml", ["train.max_steps=2"])
    assert train(recipe, resume=f"~/runs/{run.name}", quiet=True).run_dir == run
    assert train(recipe, run_dir="~/mine", quiet=True).run_dir == home / "mine"
    assert not (tmp_path / "~").exists()  # not a folder called ~ in the working directory
    with pytest.raises(UserError, match=r"^run_dir='~nosuchuser/x': cannot expand ~nosuchuser: there is no user"):
        train(recipe, run_dir="~nosuchuser/x", quiet=True)


def test_a_run_stopped_in_python_says_how_to_go_on_from_python(tmp_path, write_recipe, monkeypatch):
    from conftest import stop_at

    from gptkit.errors import Interrupted

    stop_at(monkeypatch, "train_step", 3)
    with pytest.raises(Interrupted) as e:
        train_model(write_recipe(), runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    go_on = f"train(load_recipe({str(run / 'recipe.yaml')!r}), resume={str(run)!r})"
    assert str(e.value).endswith(f" (go on with {go_on})"), str(e.value)
    monkeypatch.undo()
    assert eval(go_on).summary["status"] == "finished"  # noqa: S307  (what the message says to run)


def test_a_sweep_that_skips_failed_runs_is_stopped_by_a_ctrl_c(tmp_path, write_recipe, monkeypatch):
    """`except Exception: continue` over runs, as a notebook writes it, passes a diverged run, not a Ctrl-C
    or SIGTERM (Interrupted is a KeyboardInterrupt)."""
    from conftest import stop_at

    from gptkit.errors import Diverged, Interrupted, RunFailed

    def sweep(*lrs) -> list[Exception]:
        failed = []
        for lr in lrs:
            try:
                train(load_recipe(write_recipe(train={"max_steps": 30, "lr": lr, "grad_clip": None})),
                      runs_dir=tmp_path / "runs", quiet=True)
            except Exception as e:  # noqa: PERF203
                failed.append(e)
        return failed

    (diverged,) = sweep(1e6)
    assert isinstance(diverged, Diverged) and isinstance(diverged, RunFailed)
    stop_at(monkeypatch, "train_step", 3)
    with pytest.raises(Interrupted) as e:
        sweep(1e-3, 1e-2)
    assert isinstance(e.value, KeyboardInterrupt) and e.value.exit_code == 143
    assert len(list((tmp_path / "runs").iterdir())) == 2  # the second lr never started


def test_training_warnings_are_python_warnings_from_the_callers_line(tmp_path, write_recipe, capsys):
    """Filtered as any warning; said at the line that called train, not inside gptkit."""
    import warnings

    path = write_recipe(train={"schedule": {"name": "cosine", "warmup_steps": 50}})  # longer than the run
    with pytest.warns(gptkit.GptkitWarning, match=r"^train\.schedule \(cosine\) never reaches train\.lr") as caught:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name], [(w.filename, w.message) for w in caught]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gptkit.GptkitWarning)
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    assert capsys.readouterr().err == ""


def test_imports_assigned_that_are_not_there_are_refused_at_once(tmp_path, write_recipe):
    """pydantic checks an assignment's type alone: imports that are not there would train a run that no command
    could read back."""
    recipe = load_recipe(write_recipe())
    with pytest.raises(ValidationError, match=r"\nimports\n  component file .*nope\.py not found \[type=import_failed"):
        recipe.imports = [str(tmp_path / "nope.py")]
    assert recipe.imports == []  # as it was


def test_assigning_a_mapping_to_a_whole_section_is_refused_as_set_refuses_it(write_recipe):
    from pydantic import ValidationError

    recipe = load_recipe(write_recipe())
    batch = recipe.train.batch_size
    with pytest.raises(ValidationError, match=r"a mapping would replace the whole train section, its other keys back "
                                              r"to their defaults; set keys one by one, e.g. recipe\.train\.lr = \.\.\."):
        recipe.train = {"lr": 0.1}
    assert recipe.train.batch_size == batch  # left as it was
    recipe.train.lr = 0.1  # as the error says
    assert recipe.train.lr == 0.1


def test_a_warning_a_caller_turns_into_an_error_leaves_no_run_folder(tmp_path, write_recipe):
    import warnings

    path = write_recipe(train={"schedule": {"name": "cosine", "warmup_steps": 50}})  # longer than the run
    with warnings.catch_warnings():
        warnings.simplefilter("error", gptkit.GptkitWarning)
        with pytest.raises(gptkit.GptkitWarning, match=r"^train\.schedule \(cosine\) never reaches"):
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    assert not (tmp_path / "runs").exists()


def test_changing_a_components_parameter_in_place_says_how_to_change_it(write_recipe):
    recipe = load_recipe(write_recipe(model={"positional": "rope"}))
    with pytest.raises(TypeError, match=r"cannot set base = 500\.0: a component's parameters are fixed .* "
                                        r"recipe.model.positional = \{'name': 'rope', 'base': 500.0\}"):
        recipe.model.positional.params.base = 500.0
    recipe.model.positional = {"name": "rope", "base": 500.0}  # the way it names
    assert recipe.model.positional.params.base == 500.0
    with pytest.raises(TypeError, match=r"cannot set hidden = 40: .* recipe.model.feedforward = \{'name': 'swiglu', "
                                        r"'hidden': 40, 'bias': False, 'multiple_of': 8\}, or load the recipe with "
                                        r"overrides=\['model.feedforward.hidden=40'\]"):
        recipe.model.feedforward.params.hidden = 40  # named as the component it is


def test_changing_a_components_name_in_place_says_how_to_change_it(write_recipe):
    recipe = load_recipe(write_recipe())
    with pytest.raises(TypeError, match=r"^cannot set name of recipe\.model\.attention: .* give it anew .*, "
                                        r"e\.g\. recipe\.model\.attention = 'naive'$"):
        recipe.model.attention.name = "naive"
    with pytest.raises(TypeError, match=r"recipe\.train\.optimizer = \{'name': 'adamw', .*'beta2': 0\.99"):
        recipe.train.optimizer.params = None
    recipe.model.attention = "naive"  # the way it names
    assert recipe.model.attention.name == "naive"


def test_a_component_class_given_for_a_recipe_key_is_taken_by_its_registered_name(write_recipe, scratch_registries):
    from gptkit.components import Norm, register
    from gptkit.components.norm import RMSNorm

    recipe = load_recipe(write_recipe())
    recipe.model.norm = RMSNorm  # as a notebook holds it
    assert recipe.to_dict()["model"]["norm"]["name"] == "rmsnorm"  # a recipe still: YAML holds the name

    class UnitNorm(Norm):
        def forward(self, x):
            return x

    with pytest.raises(ValidationError, match=r"UnitNorm is not registered as a norm: register it with "
                                              r"@register\('norm', 'unit_norm'\) above its class, then give that name"):
        recipe.model.norm = UnitNorm
    register("norm", "unit")(UnitNorm)
    recipe.model.norm = UnitNorm
    assert recipe.model.norm.name == "unit"
    with pytest.raises(ValidationError, match=r"RMSNorm is a norm \('rmsnorm'\), not an attention"):
        recipe.model.attention = RMSNorm


def test_assigning_a_recipes_imports_runs_them(write_recipe, tmp_path, monkeypatch, scratch_registries):
    monkeypatch.chdir(tmp_path)  # relative to the working directory, as a dict's paths are
    (tmp_path / "assigned.py").write_text(
        "from gptkit.components import Norm, register\n\n@register('norm', 'assignednorm')\n"
        "class AssignedNorm(Norm):\n    def forward(self, x):\n        return x\n")
    recipe = load_recipe(write_recipe())
    recipe.imports = ["assigned.py"]
    recipe.model.norm = "assignednorm"  # what the file registers is known at once, as in a recipe file
    assert recipe.model.norm.cls.__name__ == "AssignedNorm"
    with pytest.raises(ValidationError, match=r"\nimports\n  component file .*nope\.py not found"):
        recipe.imports = ["assigned.py", "nope.py"]
    assert recipe.imports == [tmp_path / "assigned.py"]  # as it was


def test_what_a_notebook_shows_of_a_run_its_data_vocabulary_and_a_component(tmp_path, write_recipe):
    result = train(load_recipe(write_recipe(train={"max_steps": 1})), runs_dir=tmp_path / "runs", quiet=True)
    shown = repr(result)
    assert shown.startswith(f"RunResult(run_dir={str(result.run_dir)!r}, status='finished', steps=1, final_val_loss=")
    assert f"model=<GPT of {result.model.num_params():,} parameters>" in shown and "Linear" not in shown
    other_rank = dataclasses.replace(result, run_dir=None, summary={})  # a torchrun process but rank 0's
    assert repr(other_rank).startswith("RunResult(run_dir=None, model=<GPT of ")
    assert repr(result.dataset) == f"<CharDataset: {result.dataset.describe()}>"
    vocab = result.dataset.vocab
    assert repr(vocab) == f"Vocab({len(vocab)} characters: {''.join(vocab.itos[:40])!r}...)"
    entry = registry("norm").find("rmsnorm")
    assert re.fullmatch(r"<norm 'rmsnorm' from built-in at .*norm\.py:\d+: \S.*>", repr(entry)), repr(entry)
