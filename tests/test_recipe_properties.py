"""Property tests: any input to the recipe loader yields a valid recipe or one clean UserError."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptkit.errors import UserError
from gptkit.recipe import Recipe, load_recipe
from gptkit.recipe.yaml import load

KEYS = ["name", "seed", "data", "path", "model", "train", "sample", "n_embd", "n_head", "attention", "positional",
        "norm", "feedforward", "lr", "epochs", "batch_size", "base", "eps", "dropout", "max_steps", "corpus"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["flash", "rope", "1e-3", "yes", "~", "naive", "adamw"]))
trees = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(string.ascii_letters, min_size=1, max_size=8)),
                    inner, max_size=6)), max_leaves=25)
yaml_text = st.text(alphabet=string.printable + "\u00e9\u2028\t", max_size=200)


def check(path, overrides=()):
    try:
        assert isinstance(load_recipe(path, overrides), Recipe)
    except UserError as e:
        assert str(e) and "Traceback" not in str(e)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=yaml_text)
def test_any_text_is_a_recipe_or_a_clean_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    check(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees)
def test_any_data_is_a_recipe_or_a_clean_error(tmp_path, tree):
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    check(path)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.text(alphabet=string.printable, max_size=30), max_size=3))
def test_any_override_is_applied_or_a_clean_error(tmp_path, overrides):
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata: {path: c.txt}\n", encoding="utf-8")
    check(path, overrides)


@given(text=yaml_text)
def test_yaml_reader_never_raises_anything_but_user_errors(text):
    try:
        load(text, "r.yaml")
    except UserError:
        pass
