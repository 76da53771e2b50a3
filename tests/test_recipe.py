"""Recipe loading: YAML's traps, overrides, and one clear message per user mistake."""

import json
import shlex
import re
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptkit.errors import UserError, command_line
from gptkit.recipe import RecipeError, load_recipe, validate
from gptkit.recipe.yaml import YAMLError, load

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _named_as_the_command_line_gives_them():
    """Overrides here are named as `gptkit run --set` gives them (test_python_api.py has Python's names)."""
    with command_line():
        yield


@pytest.mark.parametrize("text,expected", [
    ("lr: 1e-3", 0.001),
    ("lr: 3e4", 30000.0),
    ("lr: 1.5E-2", 0.015),
    ("lr: .5", 0.5),
    ("lr: yes", "yes"),
    ("lr: on", "on"),
    ("lr: NO", "NO"),
    ("lr: true", True),
    ("lr: 012", 12),
    ("lr: 0x1F", 31),
    ("lr: 0o17", 15),
    ("lr: 2024-01-01", "2024-01-01"),
    ("lr: ~", None),
    ("lr: =", "="),  # YAML 1.1's value key
    ("lr: <<", "<<"),  # a merge key only where a key is
])
def test_scalars_follow_yaml_1_2(text, expected):
    assert load(text, "r.yaml")[0]["lr"] == expected


def test_a_merge_after_a_mappings_own_keys_keeps_their_lines():
    data, lines = load("train:\n  lr: 0.1\n  batch_size: -1\n  <<: {batch_size: 4, epochs: 2}\n", "r.yaml")
    assert data == {"train": {"lr": 0.1, "batch_size": -1, "epochs": 2}}  # its own keys win
    assert lines[("train", "batch_size")] == 3 and lines[("train", "lr")] == 2 and lines[("train", "epochs")] == 4


@pytest.mark.parametrize("text,message", [
    ("a: 1\na: 2\n", "r.yaml:2: duplicate key 'a' (first at line 1)"),
    ("m:\n  a: 1\n  b: 2\n  a: 3\n", "r.yaml:4: duplicate key 'm.a'"),
    ("a: !!python/object/apply:os.system ['echo hi']\n", "YAML tag '!!python/object/apply:os.system' is not allowed"),
    ("a: !!python/name:os.system\n", "is not allowed"),
    ("a: !custom 1\n", "YAML tag '!custom' is not allowed"),
    ("a:\n\tb: 1\n", "r.yaml:2: a tab character is not allowed for indentation in YAML; indent with spaces"),
    ("m:\n  \tb: 1\n", "r.yaml:2: a tab character is not allowed for indentation"),
    ("m:\n  n_head: 2\t\n", "r.yaml:2: a tab character after 'n_head: 2' is not allowed in YAML; remove it"),
    ("m:\n  n_head: 2\t# heads\n", "r.yaml:2: a tab character after 'n_head: 2' is not allowed in YAML; remove it"),
    ("a:\t1\n", "r.yaml:1: a tab character between 'a:' and '1' is not allowed in YAML; use a space"),
    ("a: [1, 2\n", "r.yaml:2: not valid YAML"),
    ("a: 'open\n", "not valid YAML"),
    ("data: &a {path: x, y: *a}\n", "r.yaml:1: an alias refers to a value that contains it"),
    ("name: &a [*a]\n", "r.yaml:1: an alias refers to a value that contains it"),
    ("x: " + "[" * 3000 + "]" * 3000 + "\n", "r.yaml: values nested too deeply to read"),
    ("a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(  # "billion laughs": 10**9 values from 10 lines
        f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n" for a, b in zip("abcdefgh", "bcdefghi")),
     "r.yaml: more than 100,000 values (aliases expanding?)"),
    ("a: 1\nn_layer: !!int abc\n", "r.yaml:2: 'abc' is not a valid int"),
    ("lr: !!float abc\n", "r.yaml:1: 'abc' is not a valid float"),
    ("x: !!bool maybe\n", "r.yaml:1: 'maybe' is not a valid bool"),
    ("m:\n  x: " + "9" * 5000 + "\n", "r.yaml:2: m.x: an integer of 5,000 digits is too long to read"),
    ("x: [1, -" + "9" * 5000 + "]\n", "r.yaml:1: x.1: an integer of 5,000 digits is too long to read"),
    ("d: &d {a: 1}\nm: {<<: *d, b: 2, b: 3}\n", "r.yaml:2: duplicate key 'm.b'"),
])
def test_yaml_errors_name_the_line(text, message):
    with pytest.raises(YAMLError) as e:
        load(text, "r.yaml")
    assert message in str(e.value)


def test_merge_keys_are_overridden_by_the_mappings_own():
    text = ("d: &d {n_embd: 64, n_head: 4}\nm: &m {<<: *d, n_embd: 32}\nagain: *m\nboth: {<<: [*d, {n_head: 8}]}\n"
            "nested: {<<: &n {<<: *d, n_head: 2}}\nalias_of_nested: *n\n")
    data = load(text, "r.yaml")[0]
    assert data["m"] == data["again"] == {"n_embd": 32, "n_head": 4}  # YAML: explicit keys win over merged ones
    assert data["both"] == {"n_embd": 64, "n_head": 4}  # and the first of several merged mappings
    assert data["nested"] == data["alias_of_nested"] == {"n_embd": 64, "n_head": 2}


def test_merge_keys_count_towards_the_value_limit():
    inner = "{k0: 1, k1: 1}"
    for i in range(30):  # each level merges the one below twice: 2**30 values from a few hundred bytes
        inner = f"{{<<: [&a{i} {inner}, *a{i}]}}"
    with pytest.raises(YAMLError, match="more than 100,000 values"):
        load(f"x: {inner}\n", "r.yaml")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    if "extras" in path.name and not _installed("gptkit-extras"):
        pytest.skip("uses the components of gptkit-extras, which is not installed (pip install -e plugins/gptkit-extras)")
    recipe = load_recipe(path)
    assert recipe.data.path.is_absolute()


def _installed(dist: str) -> bool:
    try:
        return bool(metadata.distribution(dist))
    except metadata.PackageNotFoundError:
        return False


def test_reference_recipe_is_the_users_setup():
    r = load_recipe(ROOT / "recipes" / "shakespeare.yaml")
    m, t = r.model, r.train
    assert (m.n_embd, m.n_head, m.n_layer, m.block_size, m.dropout) == (256, 8, 6, 256, 0.0)
    assert (m.attention.name, m.feedforward.name, m.norm.name, m.positional.name) == ("flash", "swiglu", "rmsnorm", "sinusoidal")
    assert (t.batch_size, t.epochs, t.lr, t.weight_decay, t.grad_clip, t.log_every) == (128, 10, 1e-3, 0.01, 1.0, 50)
    assert t.optimizer.name == "adamw"
    assert r.data.max_lines == 10_000 and r.data.corpus.name == "shakespeare"


def test_components_by_name_or_with_params(write_recipe):
    r = load_recipe(write_recipe(model={"attention": "naive", "positional": {"name": "rope", "base": 500}}))
    assert r.model.attention.name == "naive"
    assert r.model.positional.name == "rope" and r.model.positional.params.base == 500


def test_overrides_are_typed_like_the_file(write_recipe):
    r = load_recipe(write_recipe(), ["train.lr=3e-4", "model.attention=naive", "train.grad_clip=null",
                                     "model.positional={name: rope, base: 100}"])
    assert r.train.lr == 3e-4 and r.train.grad_clip is None
    assert r.model.attention.name == "naive" and r.model.positional.params.base == 100


def test_override_gives_a_named_component_parameters(write_recipe):
    r = load_recipe(write_recipe(model={"positional": "rope"}), ["model.positional.base=500"])
    assert r.model.positional.name == "rope" and r.model.positional.params.base == 500


def test_naming_the_component_a_recipe_already_has_keeps_its_parameters(write_recipe):
    """`--vary model.positional=rope,alibi` on a recipe with rope at base 500: the rope arm is the baseline."""
    path = write_recipe(model={"positional": {"name": "rope", "base": 500}})
    assert load_recipe(path, ["model.positional=rope"]).model.positional.params.base == 500
    other = load_recipe(path, ["model.positional=alibi"]).model.positional  # another component: its own defaults
    assert other.name == "alibi" and "base" not in type(other.params).model_fields


def test_naming_another_component_by_its_name_starts_from_its_defaults(write_recipe):
    """`X.name=OTHER` is `X=OTHER` (README), as `--vary train.optimizer.name=adamw,muon` makes each arm."""
    path = write_recipe(model={"positional": {"name": "rope", "base": 500}}, train={"optimizer": {"name": "muon", "beta2": 0.99}})
    by_name = load_recipe(path, ["train.optimizer.name=adamw"]).train.optimizer
    assert by_name == load_recipe(path, ["train.optimizer=adamw"]).train.optimizer and by_name.params.beta2 == 0.999
    assert load_recipe(path, ["model.positional.name=learned"]).model.positional.name == "learned"  # no rope base left
    assert load_recipe(path, ["model.positional.name=rope"]).model.positional.params.base == 500  # the same: unchanged
    for overrides in (["train.optimizer.beta2=0.9", "train.optimizer.name=adamw"],  # its parameters go after it
                      ["train.optimizer.name=adamw", "train.optimizer.beta2=0.9"]):
        optimizer = load_recipe(path, overrides).train.optimizer
        assert (optimizer.name, optimizer.params.beta2) == ("adamw", 0.9)


def test_override_gives_a_default_component_parameters(write_recipe):
    r = load_recipe(write_recipe(), ["model.attention.bias=true", "train.schedule.warmup_steps=3"])
    assert r.model.attention.name == "flash" and r.model.attention.params.bias
    assert r.train.schedule.name == "constant" and r.train.schedule.params.warmup_steps == 3


@pytest.mark.parametrize("lr", [0, 0.0, -1e-3])
def test_a_learning_rate_that_is_not_positive_is_refused(write_recipe, lr):
    with pytest.raises(RecipeError, match=r"^\S+:\d+: train.lr: "):
        load_recipe(write_recipe(train={"lr": lr}))
    with pytest.raises(RecipeError, match=rf"^--set train.lr={lr}: train.lr: "):
        load_recipe(write_recipe(), [f"train.lr={lr}"])


def test_an_override_is_blamed_for_an_error_above_its_key(write_recipe):
    with pytest.raises(RecipeError, match=r"^--set model.attention.bias.x=5: model.attention.bias: Input should be a "
                                          r"valid boolean"):
        load_recipe(write_recipe(), ["model.attention.bias.x=5"])


@pytest.mark.parametrize("key", ["data.path", "train.lr", "train.device", "sample.prompt", "name", "imports"])
def test_a_key_below_a_single_value_is_refused_as_given(write_recipe, key):
    """Not as a {name: ...} made up of the value, as a component named by a string gains parameters."""
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), [f"{key}.x=1"])
    assert str(e.value) == (f"--set {key}.x=1: {key} takes a value, with no keys below it (x); set {key} itself, "
                            f"e.g. --set {key}=VALUE")


def test_of_two_overrides_of_a_key_the_last_is_taken(write_recipe):
    assert load_recipe(write_recipe(), ["train.lr=0.1", "train.lr=0.2"]).train.lr == 0.2
    assert load_recipe(write_recipe(), ["model.positional=rope", "model.positional=alibi"]).model.positional.name == "alibi"


def test_of_two_overrides_of_a_key_the_last_is_blamed(write_recipe):
    with pytest.raises(RecipeError, match=r"^--set train.lr=x: train.lr"):
        load_recipe(write_recipe(), ["train.lr=0.1", "train.lr=x"])


@pytest.mark.parametrize("override, message", [
    ("model.n_embd=30", "--set model.n_embd=30: model.n_head: n_embd 30 is not divisible by n_head 4"),
    ("model.n_embd=36", "--set model.n_embd=36: model.positional: rope: rope needs an even head size"),
])
def test_an_override_is_blamed_for_an_error_it_causes_at_another_key(write_recipe, override, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(model={"positional": "rope"}), [override])
    assert str(e.value).startswith(message)


def test_an_error_the_file_causes_is_not_blamed_on_an_unrelated_override(write_recipe):
    path = write_recipe(model={"n_embd": 30})
    line = path.read_text().splitlines().index("  n_head: 4") + 1
    with pytest.raises(RecipeError, match=rf"^{path}:{line}: model.n_head: n_embd 30 is not divisible"):
        load_recipe(path, ["model.tie_embeddings=false", "train.lr=0.1"])


def test_a_components_refusal_is_blamed_on_an_override_of_it_before_one_of_a_size(write_recipe):
    path = write_recipe(model={"n_embd": 36, "positional": "rope"})  # head size 9: rope refuses it
    line = path.read_text().splitlines().index("  positional: rope") + 1
    with pytest.raises(RecipeError, match=rf"^{path}:{line}: model.positional: rope: "):
        load_recipe(path, ["model.dropout=0.1"])  # no size rope checks
    with pytest.raises(RecipeError, match=r"^--set model.positional=rope: model.positional: rope: "):
        load_recipe(path, ["model.positional=rope", "model.n_head=4"])


def test_an_override_is_blamed_for_an_import_that_fails(write_recipe, tmp_path):
    (tmp_path / "bad.py").write_text("raise ValueError('no')\n")
    with pytest.raises(RecipeError, match=rf"^--set imports=\[{tmp_path}/bad.py\]: imports: {tmp_path}/bad.py:1: "):
        load_recipe(write_recipe(), [f"imports=[{tmp_path}/bad.py]"])


@pytest.mark.parametrize("override, message", [
    ("model.n_embd=[1", "--set model.n_embd=[1: not valid YAML: expected ',' or ']'"),
    ("model.n_embd={a: 1, a: 2}", "--set model.n_embd={a: 1, a: 2}: duplicate key 'a'; YAML would silently keep"),
    ("model.n_embd=1\t", "--set model.n_embd=1\t: a tab character after '1' is not allowed in YAML; remove it"),
])
def test_a_yaml_error_in_an_override_names_it_whole(write_recipe, override, message):
    with pytest.raises(YAMLError) as e:
        load_recipe(write_recipe(), [override])
    assert str(e.value).startswith(message)


def test_override_paths_are_relative_to_the_cwd(write_recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = load_recipe(write_recipe(), ["data.path=other.txt"])
    assert r.data.path == tmp_path / "other.txt"


def test_a_home_folder_that_cannot_be_found_is_named_with_its_key(write_recipe, tmp_path, monkeypatch):
    import pwd

    def no_entry(uid):
        raise KeyError(uid)

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)  # a container's user with no line in /etc/passwd
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), ["data.path=~/x.txt", "imports=[~/mine.py]"])
    assert str(e.value).splitlines()[1:] == [
        f"  --set {key}: {at}: cannot expand ~: HOME is not set and this user has no home folder; write the path out "
        f"in full (got '~/{name}')" for key, at, name in [("data.path=~/x.txt", "data.path", "x.txt"),
                                                          ("imports=[~/mine.py]", "imports.0", "mine.py")]]


def test_file_paths_are_relative_to_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text("name: r\ndata: {path: ../c.txt}\n")
    assert load_recipe(path).data.path == tmp_path / "c.txt"  # absolute: a saved copy names the same file


def test_resolved_recipe_round_trips(write_recipe):
    from gptkit.recipe import validate

    r = load_recipe(write_recipe(model={"positional": {"name": "rope", "base": 500}}))
    assert validate(r.to_dict()) == r


def test_all_problems_are_reported_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")  # the list of attentions below is the built-ins
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {path: c.txt}\nmodel:\n  attention: flsh\ntrain:\n  lr: yes\n  epoch: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    msg = str(e.value)
    assert msg.startswith(f"{path} has 3 problems:")
    assert f"{path}:4: model.attention: unknown attention 'flsh' (did you mean 'flash'?). Available: flash, naive" in msg
    assert f"{path}:6: train.lr: Input should be a valid number (got 'yes')" in msg
    assert f"{path}:7: train.epoch: unknown key (did you mean 'epochs'?)" in msg
    assert msg.index(f"{path}:4:") < msg.index(f"{path}:6:") < msg.index(f"{path}:7:")
    # a duplicate key among them, in line order: not the one error that hides the others
    path.write_text("name: r\ndata: {path: c.txt}\nmodel:\n  attention: flsh\ntrain:\n  lr: 0.1\n  lr: 0.2\n  epoch: 3\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    said = str(e.value).splitlines()
    assert said[0] == f"{path} has 3 problems:" and len(said) == 4, said
    assert said[1].startswith(f"  {path}:4: model.attention: unknown attention 'flsh'")
    assert said[2] == f"  {path}:7: duplicate key 'train.lr' (first at line 6); YAML would silently keep only the last " \
        "one. Remove one."
    assert said[3].startswith(f"  {path}:8: train.epoch: unknown key (did you mean 'epochs'?)")
    # imports given twice: refused before either list's files run
    (tmp_path / "side.py").write_text("raise RuntimeError('it ran')\n")
    path.write_text("name: r\nimports: [side.py]\nimports: [side.py]\ndata: {path: c.txt}\nmodel: {n_head: 0}\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}:3: duplicate key 'imports' \(first at line 2\)"):
        load_recipe(path)
    path.write_text(f"name: r\ndata: {{path: {tmp_path / 'c.txt'}}}\nname: s\n")  # alone, when all else is well
    (tmp_path / "c.txt").write_text("some text to train on. " * 100)
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}:3: duplicate key 'name' \(first at line 1\)"):
        load_recipe(path)


def test_a_number_given_as_a_string_says_how_to_give_it(corpus):
    """PyYAML's safe_load (YAML 1.1) reads 1e-3 as a string, where gptkit's loader reads a float."""
    with pytest.raises(RecipeError) as e:
        validate({"name": "r", "data": {"path": str(corpus)}, "train": {"lr": "5e-4", "batch_size": "8"}})
    assert str(e.value).splitlines()[1:] == [
        "  train.batch_size: Input should be a valid integer (got '8'); a string: write the number without "
        "quotes",
        "  train.lr: Input should be a valid number (got '5e-4'); a string (quoted, or read by PyYAML's "
        "safe_load, which takes 5e-4 for one): write 5.0e-4, unquoted, or load the file with gptkit's load_recipe"]


def test_problems_are_listed_in_file_order_then_the_overrides(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {path: c.txt}\nmodel:\n  n_embd: x\ntrain:\n  lr: x\n  epochs: x\n  batch_size: x\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(path, ["train.max_steps=x", "model.positional.base=x", "model.n_head=x"])  # applied by depth
    lines = str(e.value).splitlines()[1:]
    assert [line.split(": ")[0].strip() for line in lines] == [
        f"{path}:4", f"{path}:6", f"{path}:7", f"{path}:8", "--set train.max_steps=x", "--set model.positional.base=x",
        "--set model.n_head=x"]


@pytest.mark.parametrize("order", [1, -1], ids=["parameter first", "component first"])
def test_a_parameter_the_component_set_after_it_lacks_is_named_by_its_own_override(write_recipe, order):
    """The component's name is applied first, whatever the order given: the parameter's override, applied
    last, is the one to blame, not the override that picked the component."""
    sets = ["model.positional.base=500", "model.positional=alibi"][::order]
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), sets)
    assert str(e.value).splitlines()[-1].startswith("--set model.positional.base=500: model.positional.base: unknown "
                                                    "key. Valid keys here: name; positional ")


def test_a_parameter_of_another_component_names_the_components_that_take_it(write_recipe, scratch_registries,
                                                                             temporary_component):
    from gptkit.components.positional import Learned, WavelengthParams

    temporary_component("positional", "learned-waves", type("LearnedWaves", (Learned,), {"Params": WavelengthParams}))
    with pytest.raises(RecipeError) as e:  # set without switching from the recipe's alibi
        load_recipe(write_recipe(model={"positional": "alibi"}), ["model.positional.base=500"])
    assert str(e.value).endswith("model.positional.base: unknown key. Valid keys here: name; positional "
                                 "'learned-waves', 'rope', 'sinusoidal' take base: pick one with its parameters, e.g. "
                                 "model.positional={name: learned-waves, base: ...}"), str(e.value)
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(model={"positional": "rope"}), ["model.positional.amplitude=0.1"])
    assert str(e.value).endswith("positional 'sinusoidal' takes amplitude: pick it with its parameters, e.g. "
                                 "model.positional={name: sinusoidal, amplitude: ...}"), str(e.value)
    with pytest.raises(RecipeError) as e:  # a key no component takes: the valid keys alone
        load_recipe(write_recipe(model={"positional": "rope"}), ["model.positional.nothing=1"])
    assert str(e.value).endswith("unknown key. Valid keys here: base, name"), str(e.value)


def test_an_empty_section_is_named_as_such(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\nmodel:\ntrain:\nsample:\n")  # bare lines: None, not {}
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert str(e.value).splitlines()[1:] == [f"  {path}:{n}: {key}: empty section; give it keys, or remove it"
                                             for n, key in enumerate(["data", "model", "train", "sample"], start=2)]
    path.write_text(f"name: r\ndata: {{path: {tmp_path / 'c.txt'}}}\nsample:\n")
    assert load_recipe(path, ["sample.tokens=5"]).sample.tokens == 5  # an override fills the empty section


def test_incompatible_choices_fail_at_validation(write_recipe):
    """test_cli_errors.py has heads that do not divide n_embd and rope with an odd head size."""
    with pytest.raises(RecipeError, match="model.positional: sinusoidal: sinusoidal needs an even n_embd"):
        load_recipe(write_recipe(model={"n_embd": 33, "n_head": 3, "positional": "sinusoidal"}))


def test_override_imports_are_relative_to_the_cwd(write_recipe, tmp_path, monkeypatch):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.py").write_text("")
    monkeypatch.chdir(tmp_path / "work")
    r = load_recipe(write_recipe(), ["imports=[mine.py]"])
    assert r.imports == [tmp_path / "work" / "mine.py"]


@pytest.mark.parametrize("override, said", [
    ("imports=lib/mine.py", "imports: expected a list of files, even of one: [lib/mine.py] (got 'lib/mine.py')"),
    ("imports=null", "imports: empty; give a list of files, e.g. [my_components.py], or remove the key (got None)"),
])
def test_imports_that_are_not_a_list_say_how_to_write_one(write_recipe, tmp_path, monkeypatch, override, said):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        load_recipe(write_recipe(), [override])
    assert str(e.value) == f"--set {override}: {said.format(cwd=tmp_path)}"


def test_another_data_path_is_the_users_text_not_the_corpus(write_recipe, tmp_path, cli):
    """A typo in --set data.path must not have the recipe's corpus written under the typo's name."""
    recipe = write_recipe(data={"path": str(tmp_path / "corpus.txt"), "corpus": "shakespeare"})
    assert load_recipe(recipe).data.corpus is not None
    assert load_recipe(recipe, [f"data.path={tmp_path / 'mine.txt'}"]).data.corpus is None
    kept = load_recipe(recipe, [f"data.path={tmp_path / 'mine.txt'}", "data.corpus=shakespeare"])
    assert kept.data.corpus.name == "shakespeare"
    assert load_recipe(recipe, [f"data.path={tmp_path / 'mine.txt'}", "data.corpus.name=shakespeare"]).data.corpus
    result = cli("run", recipe, "--set", f"data.path={tmp_path / 'mine.txt'}", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and f"data.path: file {tmp_path / 'mine.txt'} not found" in result.output
    assert not (tmp_path / "mine.txt").exists()


@pytest.mark.parametrize("overrides, message", [
    ("train.lr=0.1", r"e.g. \['train.lr=0.1'\]"),
    ({"train.lr": 0.1}, r"not a dict: \[f'\{key\}=\{value\}'"),
    ([("train.lr", 0.1)], r"one is \('train.lr', 0.1\)"),
    (3, r"got 3"),
])
def test_overrides_must_be_a_list_of_strings(write_recipe, overrides, message):
    with pytest.raises(TypeError, match=r"overrides takes a list of .key=value. strings.*" + message):
        load_recipe(write_recipe(), overrides)
    assert load_recipe(write_recipe(), None) == load_recipe(write_recipe())  # None: no overrides
    assert load_recipe(write_recipe(), (f"train.lr={x}" for x in [0.5])).train.lr == 0.5  # any iterable of strings


def test_train_model_passes_epochs_as_given(write_recipe, tmp_path):
    from gptkit import train_model

    with pytest.raises(UserError, match=r"train.epochs: Input should be a valid integer \(got 0.5\)"):
        train_model(write_recipe(), epochs=0.5, runs_dir=tmp_path / "runs", quiet=True)


AWKWARD = ["1e5", "no", "on", "null", "~", "0x10", "1_000", ".inf", "2026-11-29", "yes", "", " leading space",
           "trailing ", "a: b", "#x", "- x", "'q'", '"dq"', "multi\nline", "crlf\r\n", "\u2028", "tab\there", "=", "<<",
           "True", "012", "1:20", "héllo ☃ 名前", "\x00\x7f\ufeff", "x" * 300,
           "x\u00a0", "\u3000x", "ROMEO:\u3000"]


@pytest.mark.parametrize("value", [*AWKWARD, 1e-3, 1e20, -2.5e-300, float("inf"), 0, -7, 10**30, True, False, None,
                                   [], {}, AWKWARD, {"nested": {"list": [1, "1e5", {"k": None}], "no": "yes"}}])
def test_dump_writes_what_load_reads_back(value):
    from gptkit.recipe.yaml import dump

    for data in (value, {"key": value}, [value], {s: value for s in AWKWARD}):  # awkward keys too
        assert load(dump(data), "r.yaml")[0] == data
        one_line = dump(data, flow=True)
        assert load(one_line, "--set")[0] == data and "\n" not in one_line


def test_dump_keeps_yaml_readable():
    from gptkit.recipe.yaml import dump

    data = {"name": "1e5", "model": {"n_embd": 32, "positional": {"name": "rope"}}, "lr": 1e-3, "tags": ["a", "no"]}
    assert dump(data) == "name: '1e5'\nmodel:\n  n_embd: 32\n  positional:\n    name: rope\nlr: 0.001\ntags:\n- a\n- 'no'\n"
    assert dump(data, flow=True) == "{name: '1e5', model: {n_embd: 32, positional: {name: rope}}, lr: 0.001, tags: [a, 'no']}"


@settings(max_examples=300, deadline=None)
@given(st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(),
              st.from_regex(r"[-+ .0-9eEa-z_:#~'\"\n]{0,8}", fullmatch=True), st.sampled_from(AWKWARD)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(), st.integers()), inner,
                                                                        max_size=4)),
    max_leaves=20))
def test_any_data_dumped_is_read_back_the_same(data):
    from gptkit.recipe.yaml import dump

    assert load(dump(data), "r.yaml")[0] == data
    assert load(dump(data, flow=True), "--set")[0] == data


def test_validated_recipe_validates_again_and_a_run_named_1e5_resumes(write_recipe, tmp_path, cli):
    """What gptkit writes, gptkit reads back the same: PyYAML would write the name 1e5 unquoted, a float to YAML 1.2."""
    recipe = write_recipe(train={"max_steps": 2})
    validated = cli("validate", recipe, "--set", "name='1e5'")
    assert validated.exit_code == 0, validated.output
    (tmp_path / "v.yaml").write_text(validated.stdout, encoding="utf-8")
    again = cli("validate", tmp_path / "v.yaml")
    assert again.exit_code == 0 and again.stdout == validated.stdout, again.output
    assert cli("run", tmp_path / "v.yaml", "--runs-dir", tmp_path / "runs", "-q").exit_code == 0
    run, = (tmp_path / "runs").glob("1e5-*")
    resumed = cli("run", "--resume", run, "--set", "train.max_steps=3", "-q")
    assert resumed.exit_code == 0 and json.loads((run / "summary.json").read_text())["steps"] == 3, resumed.output
    assert load((run / "recipe.yaml").read_text(encoding="utf-8"), "recipe.yaml")[0]["name"] == "1e5"


# --- A string field given what YAML reads as another type says how to quote it ------------------------

@pytest.mark.parametrize("override, hint", [
    ("sample.prompt=ROMEO:", """--set sample.prompt=ROMEO:: sample.prompt: Input should be a valid string (got """
                             """{'ROMEO': None}) (YAML read ROMEO: as a mapping; quote it: --set 'sample.prompt="ROMEO:"')"""),
    ("name=2024", """--set name=2024: name: Input should be a valid string (got 2024) (YAML read 2024 as a number; """
                  """quote it: --set 'name="2024"')"""),
    ("sample.prompt=1e-3", "(YAML read 1e-3 as a number; quote it: --set 'sample.prompt=\"1e-3\"')"),
    ("sample.prompt=true", "(YAML read true as a boolean; quote it: --set 'sample.prompt=\"true\"')"),
    ("sample.prompt=[KING]", "(YAML read [KING] as a list; quote it: --set 'sample.prompt=\"[KING]\"')"),
    ("sample.prompt=", "(YAML read an empty value as null; write one, or --set 'sample.prompt=\"\"' for an empty text)"),
])
def test_a_string_override_read_as_another_type_says_how_to_quote_it(write_recipe, override, hint):
    path = write_recipe()
    with pytest.raises(RecipeError) as e:
        load_recipe(path, [override])
    assert hint in str(e.value)
    key, _, value = override.partition("=")
    section, _, field = key.rpartition(".")
    quoted = load_recipe(path, [f'{key}="{value}"'])  # the fix the hint gives (in the shell's quotes)
    assert getattr(getattr(quoted, section) if section else quoted, field) == value


def test_a_value_left_out_is_offered_an_empty_text_only_where_one_is_valid(write_recipe):
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), ["name="])
    assert str(e.value).endswith("name: Input should be a valid string (got None) (YAML read an empty value as null; "
                                 "write one)")  # not --set 'name=""', which is refused too


def test_a_string_vary_value_says_how_to_quote_it(write_recipe):
    """bench and ablate name a value of --vary as the recipe's loader is told (origins)."""
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), ["sample.prompt=KING:"], origins={"sample.prompt=KING:": "--vary sample.prompt=KING:"})
    assert str(e.value) == ("--vary sample.prompt=KING:: sample.prompt: Input should be a valid string (got "
                            """{'KING': None}) (YAML read KING: as a mapping; quote it: --vary 'sample.prompt="KING:",...'""" ")")
    with pytest.raises(YAMLError, match=r"""mapping values are not allowed here \(a value containing ': ' or ending """
                                        r"""in ':' must be quoted: --vary 'sample.prompt="a: b: c",...'\)"""):
        load_recipe(write_recipe(), ["sample.prompt=a: b: c"], origins={"sample.prompt=a: b: c": "--vary sample.prompt=a: b: c"})


NAME_2024 = """name: Input should be a valid string (got 2024) (YAML read 2024 as a number; quote it: name: "2024")"""


@pytest.mark.parametrize("name, prompt, prompt_problem", [
    ("2024", "{KING: 1}", """sample.prompt: Input should be a valid string (got {'KING': 1}) (YAML read {KING: 1} as a """
                          """mapping; quote it: prompt: "{KING: 1}")"""),
    # The anchor is not part of the value; an alias is written as *year, so quoting the anchor's text would
    # leave it dangling: the generic hint.
    ("&year 2024", "*year", "sample.prompt: Input should be a valid string (got 2024) (YAML read the value as a "
                            "number; quote it to make it a string)"),
])
def test_a_string_in_a_file_read_as_another_type_says_how_to_quote_it(write_recipe, name, prompt, prompt_problem):
    path = write_recipe()
    text = path.read_text().replace("name: tiny", f"name: {name}").replace("prompt: 'KING:'", f"prompt: {prompt}")
    assert text != path.read_text() and prompt in text
    path.write_text(text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    message = str(e.value)
    assert NAME_2024 in message and prompt_problem in message, message
    assert message.startswith(f"{path} has 2 problems:") and message.count(f"{path}:") == 2  # each with its line


@pytest.mark.parametrize("given, kept", [("the fox #2", "the value would be 'the fox'"), ("#2", "nothing is left"),
                                         ("{name: rope, base: 500}  # b", "the value would be '{name: rope, base: 500}'")])
def test_an_unquoted_comment_in_a_set_value_is_refused_not_cut_short(write_recipe, given, kept):
    # A --set value is one line typed on a command line: a ' #' in it is never meant as a comment
    with pytest.raises(YAMLError) as e:
        load_recipe(write_recipe(), [f"sample.prompt={given}"])
    fix = f"quote it to keep the '#': --set {shlex.quote(f'sample.prompt={json.dumps(given)}')}, or leave the " \
        "comment out" if not given.startswith("{") else "leave the comment out"  # (a mapping is no string)
    assert str(e.value) == (f"--set sample.prompt={given}: a '#' first or after a space starts a YAML comment, so "
                            f"{kept}; {fix}"), str(e.value)
    # quoted, within a word, or in a quoted string: no comment
    recipe = load_recipe(write_recipe(), ['sample.prompt="fox #2"', "data.path=a#b.txt"])
    assert recipe.sample.prompt == "fox #2" and recipe.data.path.name == "a#b.txt"
    with pytest.raises(YAMLError, match="so the value would be \"it's\""):  # an apostrophe opens no string
        load_recipe(write_recipe(), ["sample.prompt=it's #1"])
    assert load_recipe(write_recipe(), ["sample.prompt='it''s #1'"]).sample.prompt == "it's #1"  # '' is a quote within
    with pytest.raises(YAMLError, match="so the value would be '- a'; leave the comment out"):
        load_recipe(write_recipe(), ["imports=- a #1.py"])  # a block list, whose node ends past the comment


def test_an_unquoted_colon_in_a_file_value_says_how_to_quote_it(write_recipe):
    path = write_recipe()
    path.write_text(path.read_text().replace("prompt: 'KING:'", "prompt: KING:  # who speaks"))
    with pytest.raises(YAMLError) as e:
        load_recipe(path)
    line = path.read_text().splitlines().index("  prompt: KING:  # who speaks") + 1
    assert str(e.value) == (f"{path}:{line}: not valid YAML: mapping values are not allowed here (a value containing "
                            """': ' or ending in ':' must be quoted: prompt: "KING:")""")
    path.write_text(path.read_text().replace("prompt: KING:", 'prompt: "KING:"'))
    assert load_recipe(path).sample.prompt == "KING:"


@pytest.mark.parametrize("entry, fix", [("prompt: KING: hail", 'prompt: "KING: hail"'), ("prompt: KING:", 'prompt: "KING:"'),
                                        ("tokens: 5, prompt: KING: hail", 'prompt: "KING: hail"')])
def test_an_unquoted_colon_inside_braces_says_how_to_quote_it(tmp_path, entry, fix):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ndata: {{path: t.txt}}\nsample: {{{entry}}}\n")
    with pytest.raises(YAMLError) as e:
        load_recipe(path)
    assert str(e.value) == (f"{path}:3: not valid YAML: expected ',' or '}}', but got ':' (a value containing ': ' or "
                            f"ending in ':' must be quoted: {fix})")
    fixed = entry.replace(fix.replace('"', ""), fix)
    path.write_text(f"name: r\ndata: {{path: t.txt}}\nsample: {{{fixed}}}\n")
    with pytest.raises(YAMLError, match=r"must be quoted: b: \"c: d\"\)$"):  # given alone, as --set gives it
        load_recipe(path, ["model.attention={name: flash, b: c: d}"])


def test_a_string_parameter_of_a_component_says_how_to_quote_it(write_recipe, temporary_component):
    from gptkit.components.base import Params as BaseParams
    from gptkit.components.norm import RMSNorm

    class Labelled(RMSNorm):
        class Params(BaseParams):
            eps: float = 1e-5
            label: str = "x"

    temporary_component("norm", "labelled", Labelled)
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe(), ["model.norm={name: labelled, label: 7}"])
    assert """model.norm.label: Input should be a valid string (got 7) (YAML read 7 as a number; quote it: """ \
           """label: "7")""" in str(e.value)


def test_choices_are_listed_as_yaml_writes_them_and_quoted_ones_as_they_are():
    from typing import Literal

    from pydantic import BaseModel, ValidationError

    from gptkit.recipe.errors import describe_errors

    class Choice(BaseModel):
        mode: Literal[True, None, "None", "True-ish"]

    with pytest.raises(ValidationError) as e:
        Choice(mode="x")
    assert describe_errors(e.value, Choice) == [(("mode",), "Input should be true, null, 'None' or 'True-ish' (got 'x')")]


@pytest.mark.parametrize("at,expected", [
    (0, "abcdefghi…"), (12, "…ijklmnop…"), (25, "…rstuvwxyz"), (99, "…rstuvwxyz"),
])
def test_a_quoted_text_is_clipped_around_its_problem(at, expected):
    from gptkit.errors import clipped
    assert clipped("abcdefghijklmnopqrstuvwxyz", at, width=10) == expected
    assert clipped("short", at, width=10) == "short"


def test_a_value_too_long_to_copy_gets_the_quoting_rule_alone():
    with pytest.raises(YAMLError) as e:
        load("x" * 100_000 + ": a", "--set sample.prompt=...", lambda text: f"--set 'sample.prompt={text}'")
    assert str(e.value).endswith("(a value containing ': ' or ending in ':' must be quoted)") and len(str(e.value)) < 250


def test_a_fix_to_copy_is_never_clipped():
    prompt = "ROMEO: But soft: what light through yonder window breaks? It is the east, and Juliet is the sun."
    with pytest.raises(YAMLError) as e:  # (two colons: one would be a mapping, said later by string_hint)
        load(prompt, "--set sample.prompt=...", lambda text: f"--set 'sample.prompt={text}'")
    assert str(e.value).endswith(f"must be quoted: --set 'sample.prompt={prompt}')")


def test_several_problems_of_one_origin_name_it_once():
    from gptkit.errors import problems

    origin = "the recipe stored in runs/x"
    assert problems(origin, [f"{origin}: model.norm: unknown norm 'a'", f"{origin}:3: seed: bad", "train.lr: bad"]) == (
        f"{origin} has 3 problems:\n  model.norm: unknown norm 'a'\n  {origin}:3: seed: bad\n  train.lr: bad")
    assert problems(origin, [f"{origin}: model.norm: unknown norm 'a'"]) == f"{origin}: model.norm: unknown norm 'a'"


@pytest.mark.parametrize("text", ["", "# a start\n", "---\n"])
def test_an_empty_recipe_file_is_said_to_be_empty(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=f"^{re.escape(str(path))} is empty; a recipe needs at least name and data.path"):
        load_recipe(path)
    (tmp_path / "t.txt").write_text("KING: hail\n" * 20)
    assert load_recipe(path, ["name=r", f"data.path={tmp_path / 't.txt'}"]).name == "r"  # every key given by --set
