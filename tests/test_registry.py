from pathlib import Path

import pytest
from torch import nn

from gptkit.components.norm import Norm
from gptkit.errors import command_line
from gptkit.registry import Registry, RegistryError, kinds, registry


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    """These tests are about the built-ins, whatever packages are installed (test_plugins.py tests those)."""
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")


def test_builtin_kinds_and_names():
    assert {"attention", "feedforward", "norm", "positional", "optimizer", "schedule", "corpus"} <= set(kinds())
    assert registry("attention").names() == ["flash", "naive"]
    assert registry("feedforward").names() == ["mlp", "swiglu"]
    assert registry("norm").names() == ["layernorm", "rmsnorm"]
    assert registry("positional").names() == ["alibi", "learned", "none", "rope", "sinusoidal"]


def test_names_accepts_wildcards():
    assert registry("positional").names("*i*") == ["alibi", "sinusoidal"]


def test_unknown_name_suggests_and_lists():
    with pytest.raises(RegistryError) as e:
        registry("attention").get("flsh")
    assert "did you mean 'flash'" in str(e.value)
    assert "flash, naive" in str(e.value)
    for typed, meant in (("FLASH", "flash"), ("RMSNorm", "rmsnorm"), ("LayerNrom", "layernorm")):  # case aside
        with pytest.raises(RegistryError, match=f"did you mean '{meant}'"):
            registry("attention" if meant == "flash" else "norm").get(typed)


def test_unknown_kind_lists_kinds():
    with pytest.raises(RegistryError, match="did you mean 'norm'"):
        registry("norms")


def test_find_reports_where_a_component_is_defined():
    import gptkit.components.norm

    entry = registry("norm").find("rmsnorm")
    assert entry.source == "built-in"
    file, line = entry.where.rsplit(":", 1)
    assert Path(file) == Path(gptkit.components.norm.__file__)
    lines = Path(file).read_text().splitlines()
    assert lines[int(line) - 1 : int(line) + 1] == ['@norm.register("rmsnorm")', "class RMSNorm(Norm):"]  # its decorator
    assert entry.summary.startswith("Root-mean-square")


def test_duplicate_registration_names_both_places():
    reg = Registry("norm", Norm)

    @reg.register("mine")
    class First(Norm):
        forward = nn.Identity.forward

    class Second(Norm):
        forward = nn.Identity.forward

    with pytest.raises(RegistryError) as e:
        reg.register("mine", Second)
    msg = str(e.value)
    assert "registered twice" in msg and msg.count("test_registry.py:") == 2


def test_two_classes_nested_in_a_local_file_under_one_name_are_a_clash(cli, tmp_path, scratch_registries):
    (tmp_path / "nested.py").write_text(
        "from gptkit.components import Norm, register\n\nclass A:\n    @register('norm', 'twice')\n"
        "    class N(Norm):\n        forward = lambda self, x: x\n\nclass B:\n    @register('norm', 'twice')\n"
        "    class N(Norm):\n        forward = lambda self, x: 2 * x\n")
    result = cli("show", "norm", "twice", "--import", tmp_path / "nested.py")
    assert result.exit_code == 2 and "norm 'twice' is registered twice: A.N by" in result.output, result.output


def test_registering_an_invalid_class_fails_at_once_naming_it():
    """What is invalid is test_plugins.py's catalogue; registering in code raises there and then."""
    reg = Registry("norm", Norm)
    with pytest.raises(RegistryError, match=r"^norm 'stub': does not implement forward\(\)"):
        reg.register("stub", type("Stub", (Norm,), {}))
    assert "stub" not in reg


def test_registering_another_class_under_a_name_from_unknown_source_is_still_an_error():
    reg = Registry("norm", Norm)
    namespace = {"Norm": Norm, "nn": nn}
    exec("class A(Norm):\n    forward = nn.Identity.forward", namespace)  # no source file: as in a notebook
    exec("class B(Norm):\n    forward = nn.Identity.forward", namespace)
    reg.register("mine", namespace["A"])
    with pytest.raises(RegistryError, match="registered twice"):
        reg.register("mine", namespace["B"])


def test_a_class_defined_again_replaces_the_earlier_one():
    """A notebook cell run again after an edit, or a module reloaded: the newest definition wins."""
    reg = Registry("norm", Norm)
    for version in (1, 2):
        namespace = {"Norm": Norm, "nn": nn, "__name__": "__main__"}
        exec(f"class Mine(Norm):\n    version = {version}\n    forward = nn.Identity.forward", namespace)
        reg.register("mine", namespace["Mine"])
    assert reg.get("mine").version == 2


def test_a_component_defined_in_an_interactive_session_registers(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # a REPL's: no __file__
    reg = Registry("norm", Norm)
    namespace = {"Norm": Norm, "nn": nn, "__name__": "__main__"}
    exec("class Typed(Norm):\n    forward = nn.Identity.forward", namespace)
    reg.register("typed", namespace["Typed"])
    assert reg.find("typed").source == "__main__"


@pytest.mark.parametrize("name", ["my_norm", "rms-norm", "norm2", "T5bias", "a"])
def test_a_name_of_ascii_letters_digits_underscores_and_dashes_is_accepted(name):
    from gptkit.registry import name_problem

    assert name_problem("norm", name) is None


@pytest.mark.parametrize("name", ["2norm", "-x", "_x", "é", "normé", "my norm", "my.norm", "", "1e5", None])
def test_any_other_name_is_refused_by_the_rule_its_message_states(name):
    from gptkit.registry import name_problem

    assert name_problem("norm", name) == (f"norm name {name!r} must be a word such as 'my_norm' "
                                          "(ASCII letters, digits, _ and -, starting with a letter)")
    if isinstance(name, str):  # register(None, ...) is a TypeError: the name goes first
        with pytest.raises(RegistryError, match="starting with a letter"):
            Registry("norm", Norm).register(name, registry("norm").get("rmsnorm"))


def test_an_unknown_name_says_when_plugins_are_off(monkeypatch):
    with pytest.raises(RegistryError) as e:
        registry("attention").get("cosattn")
    assert str(e.value) == "unknown attention 'cosattn'. Available: flash, naive (plugins are turned off by GPTKIT_NO_PLUGINS)"
    with command_line(), pytest.raises(RegistryError) as e:  # within a `gptkit` command, its flag turns them off too
        registry("attention").get("cosattn")
    assert str(e.value).endswith(" (plugins are turned off by GPTKIT_NO_PLUGINS or --no-plugins)")
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "0")
    with pytest.raises(RegistryError) as e:
        registry("attention").get("cosattn")
    assert "plugins are turned off" not in str(e.value)
