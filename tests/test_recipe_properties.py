"""Property tests: any input to the recipe loader yields a valid recipe or one clean error.

Random text and overrides exercise the YAML reader and the override syntax; random recipes built
around a valid skeleton (every registered component, with random parameters) reach the validation of
the model and train sections and of each component's parameters.
"""

import os
import re
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptkit.errors import UserError
from gptkit.recipe import Recipe, RecipeError, load_recipe
from gptkit.recipe.yaml import load
from gptkit.registry import RegistryError, kinds, registry

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

junk = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                 st.text(max_size=12), st.sampled_from(["1e-3", "yes", "~", "auto", ""]))
trees = st.recursive(junk, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(string.ascii_letters, min_size=1, max_size=8), inner, max_size=3)),
    max_leaves=10)
# Values a field may well take: some recipes validate, and most others fail at only a few keys.
plausible = st.one_of(st.integers(0, 64), st.sampled_from([0.0, 0.1, 0.5, 1e-3, 1.0, 2.0, "auto", None, True, False]))
yaml_text = st.text(alphabet=string.printable + "\u00e9\u2028\t", max_size=200)


def params_of(kind: str, name: str) -> list[str]:
    try:
        return [f.alias or key for key, f in registry(kind).get(name).Params.model_fields.items()]
    except RegistryError:  # a broken plugin: the recipe must say so
        return []


def component(kind: str):
    """A registered name, alone or with random values for its own parameters (and now and then an
    unknown key or name)."""
    def spec(name):
        known = {key: st.one_of(plausible, junk) for key in params_of(kind, name)}
        return st.one_of(st.fixed_dictionaries({"name": st.just(name)}, optional=known),
                         st.fixed_dictionaries({"name": st.just(name), "bogus": junk}, optional=known))

    names = st.sampled_from(registry(kind).names())
    return st.one_of(names, names.flatmap(spec), st.sampled_from(["flsh", "", "none"]), junk)


def section(name: str):
    """Some of the section's keys (components from their registries), with or without an unknown one;
    or anything at all."""
    fields = Recipe.model_fields[name].annotation.model_fields
    values = {key: component(key) if key in kinds() else st.one_of(plausible, plausible, junk) for key in fields}
    return st.one_of(st.fixed_dictionaries({}, optional=values),
                     st.fixed_dictionaries({"typo": trees}, optional=values), trees)


recipes = st.fixed_dictionaries({"name": st.just("prop")}, optional={"model": section("model"), "train": section("train")})


def load_or_error(path, overrides=()) -> UserError | None:
    try:
        assert isinstance(load_recipe(path, overrides), Recipe)
    except UserError as e:
        assert str(e)
        return e
    return None


@SETTINGS
@given(text=yaml_text)
def test_any_text_is_a_recipe_or_a_clean_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    load_or_error(path)
    try:  # the reader itself too: the file's reading turns "\r" into "\n"
        load(text, "r.yaml")
    except UserError:
        pass


@SETTINGS
@given(recipe=recipes)
def test_any_recipe_validates_or_names_the_key_at_fault(tmp_path, corpus, recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**recipe, "data": {"path": str(corpus)}}), encoding="utf-8")
    error = load_or_error(path)
    if error is not None:
        assert isinstance(error, RecipeError), error
        at = re.escape(str(path))
        problems = re.split(rf"\n  (?={at}:)", str(error))  # not at every line break: a bad name may hold one
        if len(problems) > 1:
            assert re.fullmatch(rf"{at} has {len(problems) - 1} problems:", problems.pop(0)), str(error)
        for problem in problems:
            assert re.match(rf"{at}(:\d+)?: (model|train)(\.\S+)?: \S", problem), problem


# Overrides a recipe accepts (random text hardly ever is one), each of which must then be applied.
VALID = {
    "name": ["r2", "'2024'"], "seed": ["0", "-7"], "imports": ["[]"], "data.path": ["x.txt", "~/x.txt"],
    "data.val_fraction": ["0", "0.5"], "data.max_lines": ["null", "64"], "data.corpus": ["shakespeare", "null"],
    "data.stride": ["3"], "model.n_layer": ["1"], "model.n_embd": ["512"], "model.dropout": ["0.5"],
    "model.tie_embeddings": ["false"], "model.attention": ["naive", "{name: flash, bias: true}"],
    "model.positional": ["rope", "alibi", "{name: rope, base: 500}"], "model.positional.name": ["learned", "none"],
    "model.positional.base": ["500"], "model.feedforward": ["mlp"], "model.feedforward.hidden": ["64"],
    "model.norm": ["layernorm"], "model.norm.eps": ["1e-3"], "train.lr": ["0.5", "2"], "train.batch_size": ["4"],
    "train.micro_batch_size": ["auto", "null", "2"], "train.grad_clip": ["null", "0.5"], "train.epochs": ["1"],
    "train.optimizer": ["muon", "{name: muon, lr_scale: 2}"], "train.optimizer.beta2": ["0.99"],
    "train.schedule": ["cosine", "{name: cosine, warmup_steps: 2}"], "train.schedule.warmup_steps": ["3"],
    "train.device": ["cpu", "cuda:1"], "train.precision": ["fp32"], "train.compile": ["true", "max-autotune"],
    "train.eval_every": ["null", "5"], "sample.prompt": ["'KING:'", "''"], "sample.top_k": ["null", "1"],
    "sample.temperature": ["0.5"], "sample.tokens": ["0"]}
valid = st.sampled_from([f"{key}={value}" for key, values in VALID.items() for value in values])
PATHS = {("data", "path"), ("imports",)}  # made absolute, from the current directory
MISSING = object()


def holds(resolved, value) -> bool:
    """Whether `resolved` (a part of Recipe.to_dict()) is what an override read as `value` set: a component
    named by a string is that component, with its parameters; a mapping's keys hold their values."""
    if isinstance(value, dict):
        return isinstance(resolved, dict) and all(holds(resolved.get(k, MISSING), v) for k, v in value.items())
    if isinstance(value, str) and isinstance(resolved, dict):
        return resolved.get("name") == value
    return resolved == value


@settings(max_examples=85, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.one_of(st.text(alphabet=string.printable, max_size=30), valid), max_size=3))
def test_any_override_is_applied_or_a_clean_error(tmp_path, corpus, overrides):
    path = tmp_path / "r.yaml"
    path.write_text(f"name: r\ndata: {{path: {corpus}}}\nmodel: {{positional: {{name: rope, base: 500}}}}\n",
                    encoding="utf-8")
    try:
        resolved = load_recipe(path, overrides).to_dict()
    except UserError as e:
        assert str(e)
        return
    keys = [tuple(o.partition("=")[0].strip().split(".")) for o in overrides]
    for i, (override, key) in enumerate(zip(overrides, keys)):
        if any(j != i and (k[: len(key)] == key or key[: len(k)] == k) for j, k in enumerate(keys)):
            continue  # another override sets this key, or one above or below it
        value = load(override.partition("=")[2], "override")[0]
        if key in PATHS:
            value = [os.path.abspath(os.path.expanduser(v)) for v in value] if isinstance(value, list) \
                else os.path.abspath(os.path.expanduser(value))
        at = resolved
        for part in key:
            at = at.get(part, MISSING) if isinstance(at, dict) else MISSING
        assert holds(at, value), (override, at)
