"""Third-party components: real distributions (a dist-info folder and a module on a temporary
sys.path entry, as pip leaves them), local files named by a recipe's `imports`, and the
list/show/check commands. No mock of the registry: every case goes through importlib.metadata."""

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest

from gptkit import plugins
from gptkit.recipe import RecipeError, load_recipe
from gptkit.registry import RegistryError, forget_plugins, registry
from gptkit.training.checkpoint import missing_plugins

NORM = """
    import torch
    from pydantic import Field
    from gptkit.components import Norm, Params

    class UnitParams(Params):
        eps: float = Field(1e-6, gt=0, description="keeps the division finite")

    class UnitNorm(Norm):
        '''Scale every vector to unit length.'''

        Params = UnitParams

        def forward(self, x):
            return x / x.norm(dim=-1, keepdim=True).clamp(min=self.params.eps)
"""


def test_installed_component_is_listed_from_metadata_and_imported_on_use(install, write_recipe, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_unit:UnitNorm"}}, {"acme_unit": NORM})
    assert "unitnorm" in registry("norm").names()
    assert "acme_unit" not in sys.modules  # listing names reads metadata only
    entry = registry("norm").find("unitnorm")
    assert "acme_unit" in sys.modules
    assert entry.source == "acme-norms 1.2" and entry.summary == "Scale every vector to unit length."
    assert entry.where.endswith("acme_unit.py:9")

    recipe = write_recipe(model={"norm": {"name": "unitnorm", "eps": 1e-5}})
    result = cli("run", recipe, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output


def test_a_miss_imports_no_plugin(install):
    install("acme-norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_unused:UnitNorm"}}, {"acme_unused": NORM})
    with pytest.raises(RegistryError, match="did you mean 'unitnorm'"):
        registry("norm").get("unitnrm")
    registry("norm").get("rmsnorm")
    assert "acme_unused" not in sys.modules


BROKEN = [
    ("import-error", "acme_raises:Thing", {"acme_raises": "import nowhere_to_be_found\n"},
     "ModuleNotFoundError: No module named 'nowhere_to_be_found'"),
    ("missing-object", "acme_empty:Missing", {"acme_empty": "X = 1\n"},
     "AttributeError: module 'acme_empty' has no attribute 'Missing'"),
    ("not-a-norm", "acme_wrong:Linear", {"acme_wrong": "from torch.nn import Linear\n"},
     "must be a subclass of gptkit.components.norm.Norm"),
    ("a-positional-as-a-norm", "acme_rope:RoPE", {"acme_rope": "from gptkit.components.positional import RoPE\n"},
     "must be a subclass of gptkit.components.norm.Norm, got <class 'gptkit.components.positional.RoPE'>: it is a "
     "positional component; register it as one (@register(\"positional\", ...), or the entry point group "
     "gptkit.positional)"),
    ("wrong-signature", "acme_sig:Bad", {"acme_sig": "from gptkit.components import Norm\n"
                                                     "class Bad(Norm):\n    forward = lambda self: 0\n"},
     "its forward() cannot be called as gptkit calls it: forward(x)"),
    ("params-not-a-model", "acme_params:Bad", {"acme_params": "from gptkit.components import Norm\n"
                                                               "class Bad(Norm):\n    Params = dict\n"},
     "its Params must be a subclass of gptkit.components.Params"),
    ("params-without-default", "acme_required:Bad", {"acme_required": (
        "from gptkit.components import Norm, Params\n"
        "class P(Params):\n    width: int\n"
        "class Bad(Norm):\n    Params = P\n")},
     "its Params must give every field a default; width has none"),
    ("params-with-a-name-field", "acme_named:Bad", {"acme_named": (
        "from gptkit.components import Norm, Params\n"
        "class P(Params):\n    name: str = 'mine'\n"
        "class Bad(Norm):\n    Params = P\n")},
     "its Params may not have a field called 'name': in a recipe, 'name' says which component it is"),
    ("lax-nested-params", "acme_lax:Bad", {"acme_lax": (
        "from pydantic import BaseModel\nfrom gptkit.components import Norm, Params\n"
        "class Inner(BaseModel):\n    scale: float = 1.0\n"
        "class P(Params):\n    inner: list[Inner] | None = None\n"
        "class Bad(Norm):\n    Params = P\n    forward = lambda self, x: x\n")},
     "its Params use Inner, which would ignore unknown keys or convert values of the wrong type; derive nested "
     "models from gptkit.components.Params too, and keep its model_config's extra='forbid' and strict=True"),
    ("lax-params", "acme_lax_top:Bad", {"acme_lax_top": (
        "from pydantic import ConfigDict\nfrom gptkit.components import Norm, Params\n"
        "class LaxParams(Params):\n    model_config = ConfigDict(extra='allow', strict=False)\n    eps: float = 1e-5\n"
        "class Bad(Norm):\n    Params = LaxParams\n    forward = lambda self, x: x\n")},
     "its Params use LaxParams, which would ignore unknown keys or convert values of the wrong type"),
    ("loosely-typed-params", "acme_loose:Bad", {"acme_loose": (
        "from pydantic import ConfigDict\nfrom gptkit.components import Norm, Params\n"
        "class LooseParams(Params):\n    model_config = ConfigDict(strict=False)\n    eps: float = 1e-5\n"
        "class Bad(Norm):\n    Params = LooseParams\n    forward = lambda self, x: x\n")},
     "its Params use LooseParams, which would ignore unknown keys or convert values of the wrong type"),
    ("loosely-typed-field", "acme_loose_field:Bad", {"acme_loose_field": (
        "from pydantic import Field\nfrom gptkit.components import Norm, Params\n"
        "class FieldParams(Params):\n    eps: float = Field(1e-5, strict=False)\n"
        "class Bad(Norm):\n    Params = FieldParams\n    forward = lambda self, x: x\n")},
     "its Params use FieldParams, which would ignore unknown keys or convert values of the wrong type"),
    ("no-forward", "acme_stub:Stub", {"acme_stub": "from gptkit.components import Norm\nclass Stub(Norm):\n    pass\n"},
     "does not implement forward()"),
    ("exits-at-import", "acme_exits:Thing", {"acme_exits": "import sys\nsys.exit('needs a GPU')\n"},
     "SystemExit: needs a GPU"),
]


@pytest.mark.parametrize("source, line, error", [
    ("import torch\n\nimport nowhere_to_be_found\n", 3, "ModuleNotFoundError: No module named 'nowhere_to_be_found'"),
    ("X = 1\ndef helper():\n    raise RuntimeError('needs a GPU')\nhelper()\n", 3, "RuntimeError: needs a GPU"),
])
def test_a_plugin_failing_to_import_is_named_with_its_line(install, tmp_path, source, line, error):
    install("acme-late", "1.0", {"gptkit.norm": {"late": "acme_late:Thing"}}, {"acme_late": source})
    with pytest.raises(RegistryError) as e:
        registry("norm").get("late")
    assert f"is broken: {error} (at {tmp_path / 'site' / 'acme_late.py'}:{line}). Fix or uninstall" in str(e.value)


@pytest.mark.parametrize("kind, method", [("norm", "forward"), ("feedforward", "forward"), ("schedule", "factor"),
                                          ("optimizer", "build"), ("corpus", "text")])
def test_a_component_without_what_its_kind_requires_is_refused_at_registration(kind, method):
    stub = type("Stub", (registry(kind).base,), {})
    with pytest.raises(RegistryError, match=rf"{kind} 'stub': does not implement {method}\(\)"):
        registry(kind).register("stub", stub)
    assert "stub" not in registry(kind).names()


@pytest.mark.parametrize("value,sources,error", [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_a_broken_plugin_is_contained_and_explained(install, write_recipe, cli, tmp_path, value, sources, error):
    install("acme-broken", "0.3", {"gptkit.norm": {"badnorm": value}}, sources)
    report = f"norm 'badnorm' from acme-broken 0.3 ({value}) is broken: {error}"

    with pytest.raises(RegistryError) as e:
        registry("norm").get("badnorm")
    assert report in str(e.value)
    assert registry("norm").get("rmsnorm")  # every other component keeps working

    listed = cli("list")
    assert listed.exit_code == 0, listed.output
    assert "badnorm  [acme-broken 0.3]" in listed.output and f"BROKEN: {report}" in listed.output
    record = next(r for r in json.loads(cli("list", "norm", "--json").output) if r["name"] == "badnorm")
    assert record["status"] == "broken" and report in record["error"]

    result = cli("run", write_recipe(model={"norm": "badnorm"}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and report in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    for command in (("show", "norm", "badnorm"), ("check", "norm", "badnorm")):
        result = cli(*command)
        assert result.exit_code == 2 and report in result.output, command
    with pytest.raises(RegistryError) as e:  # known broken: no choice to offer
        registry("norm").get("nosuchnorm")
    available = str(e.value).partition("Available: ")[2]
    assert "rmsnorm" in available and "badnorm" not in available, str(e.value)


def test_a_plugin_naming_a_built_in_is_a_clash(install, write_recipe):
    install("acme-clash", "2.0", {"gptkit.norm": {"rmsnorm": "acme_clash:UnitNorm"}}, {"acme_clash": NORM})
    with pytest.raises(RegistryError) as e:
        registry("norm").get("rmsnorm")
    assert "norm 'rmsnorm' is claimed by built-in and by acme-clash 2.0" in str(e.value)
    assert ("Rename the entry point in acme-clash (its group gptkit.norm), or uninstall acme-clash" in str(e.value)
            and "one of the packages" not in str(e.value))  # a built-in is no package to uninstall
    with pytest.raises(RecipeError, match="model.norm: norm 'rmsnorm' is claimed by built-in and by acme-clash 2.0"):
        load_recipe(write_recipe(model={"norm": "rmsnorm"}))
    assert load_recipe(write_recipe(model={"norm": "layernorm"})).model.norm.name == "layernorm"
    assert "acme_clash" not in sys.modules


def test_a_clash_with_a_default_component_does_not_break_gptkit(install, tmp_path):
    # In a fresh process, so nothing is read before the clashing package is there.
    install("acme-clash", "2.0", {"gptkit.attention": {"flash": "acme_flash:Flash"}})
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(tmp_path / "site")])}
    env.pop("GPTKIT_NO_PLUGINS", None)
    listed = subprocess.run([sys.executable, "-m", "gptkit", "list", "attention"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert "flash  [built-in and acme-clash 2.0]  BROKEN" in listed.stdout
    assert "naive  [built-in]" in listed.stdout


def test_two_distributions_claiming_one_name_clash(install, cli):
    install("acme-one", "1.0", {"gptkit.norm": {"unitnorm": "acme_one:UnitNorm"}}, {"acme_one": NORM})
    install("acme-two", "3.1", {"gptkit.norm": {"unitnorm": "acme_two:UnitNorm"}}, {"acme_two": NORM}, site="site2")
    with pytest.raises(RegistryError) as e:
        registry("norm").get("unitnorm")
    assert "claimed by acme-two 3.1 and by acme-one 1.0" in str(e.value) or \
        "claimed by acme-one 1.0 and by acme-two 3.1" in str(e.value)
    listed = cli("list", "norm")
    assert listed.exit_code == 0 and "BROKEN: norm 'unitnorm' is claimed by" in listed.output
    checked = cli("check", "norm", "unitnorm")  # says which component once
    assert checked.exit_code == 2 and checked.output.startswith("error: norm 'unitnorm' is claimed by"), checked.output


def test_the_same_distribution_seen_twice_is_not_a_clash(install):
    # An editable install can leave the same distribution's metadata in two sys.path folders.
    install("acme-norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_twice:UnitNorm"}}, {"acme_twice": NORM})
    install("acme_norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_twice:UnitNorm"}}, site="site2")
    assert sum(d.metadata["Name"] in ("acme-norms", "acme_norms") for d in metadata.distributions()) == 2
    assert registry("norm").find("unitnorm").source in ("acme-norms 1.0", "acme_norms 1.0")


def test_a_stale_copy_of_a_distribution_further_down_sys_path_adds_nothing(install, tmp_path):
    # A stale egg-info or user-site copy: its entry points are not the imported distribution's
    install("acme-norms", "2.0", {"gptkit.norm": {"unitnorm": "acme_new:UnitNorm"}}, {"acme_new": NORM}, site="new")
    install("acme-norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_old:UnitNorm", "oldnorm": "acme_old:UnitNorm"}},
            site="old")
    sys.path.remove(str(tmp_path / "new"))  # the newer first on sys.path, as the one imported is
    sys.path.insert(0, str(tmp_path / "new"))
    plugins.forget()
    assert [ep.name for ep in metadata.entry_points(group="gptkit.norm") if ep.value.startswith("acme")] == ["unitnorm"]
    assert "oldnorm" not in registry("norm").names() and registry("norm").find("unitnorm").source == "acme-norms 2.0"


def test_a_plugin_that_registers_what_it_declares_is_one_source(install, cli, scratch_registries):
    # The entry point's import runs the module's own `register`: the same class, under the same name.
    install("acme-self", "1.0", {"gptkit.norm": {"selfnorm": "acme_self:UnitNorm", "othernorm": "acme_self:Other"}},
            {"acme_self": """
        from gptkit.components import Norm, register

        @register("norm", "selfnorm")
        class UnitNorm(Norm):
            def forward(self, x):
                return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)

        class Other(UnitNorm):
            pass
    """})
    for _ in range(2):
        assert registry("norm").find("selfnorm").source == "acme-self 1.0"
    result = cli("check", "norm", "selfnorm")
    assert result.exit_code == 0 and result.output.startswith("norm 'selfnorm' from acme-self 1.0"), result.output

    # Registered here, not by the plugin: another class under a name it declares, a clash with the plugin
    registry("norm").register("othernorm", sys.modules["acme_self"].UnitNorm)
    with pytest.raises(RegistryError, match="norm 'othernorm' is claimed by .*acme_self.py and by acme-self 1.0"):
        registry("norm").get("othernorm")
    # and under a name of its own, an alias of the plugin's class, as a local file may make
    registry("norm").register("aliasnorm", sys.modules["acme_self"].UnitNorm)
    assert registry("norm").get("aliasnorm") is registry("norm").get("selfnorm")


def test_a_plugin_registering_another_class_than_its_entry_point_names_is_a_clash_at_once(install, scratch_registries):
    install("acme-wrong", "1.0", {"gptkit.norm": {"wrongnorm": "acme_wrong:A"}}, {"acme_wrong": """
        from gptkit.components import Norm, register

        class A(Norm):
            def forward(self, x):
                return x

        @register("norm", "wrongnorm")
        class B(A):
            pass
    """})
    for _ in range(2):  # the first use too, not only once the entry point's import has registered B
        with pytest.raises(RegistryError, match="^norm 'wrongnorm' from acme-wrong 1.0: its entry point names "
                                                "acme_wrong:A, but its module acme_wrong registers B under that name"):
            registry("norm").get("wrongnorm")


def test_a_plugin_registering_a_name_it_does_not_declare_is_broken(install, cli, scratch_registries):
    # Found only once the declared name's import ran: a run trained with it could not be resumed elsewhere.
    install("acme-extra", "1.0", {"gptkit.norm": {"declared": "acme_extra:Declared"}}, {"acme_extra": """
        from gptkit.components import Norm, register

        class Declared(Norm):
            def forward(self, x):
                return x

        @register("norm", "undeclared")
        class Undeclared(Declared):
            pass
    """})
    expected = ("norm 'declared' from acme-extra 1.0 (acme_extra:Declared) is broken: norm 'undeclared' is "
                "registered by acme_extra, a module of the installed package acme-extra, which declares no entry "
                "point 'undeclared' in group gptkit.norm: gptkit finds a plugin's components by their entry points, "
                "without importing it. Declare it in acme-extra's pyproject.toml, under "
                "[project.entry-points.\"gptkit.norm\"]: undeclared = \"acme_extra:Undeclared\", and install the "
                "package again; or drop the register call. Fix or uninstall that package")
    assert registry("norm").entry("declared").error.startswith(expected)
    assert "undeclared" not in registry("norm").names()
    result = cli("check", "norm", "declared")
    assert result.exit_code == 2 and result.output.startswith(f"error: {expected}"), result.output


def test_a_plugin_whose_import_fails_after_registering_is_broken_not_a_clash(install, scratch_registries):
    install("acme-half", "1.0", {"gptkit.norm": {"halfnorm": "acme_half:UnitNorm"}}, {"acme_half": """
        from gptkit.components import Norm, register

        @register("norm", "halfnorm")
        class UnitNorm(Norm):
            def forward(self, x):
                return x

        import not_a_module_anywhere  # noqa: F401  (fails after the registration ran)
    """})
    for _ in range(2):
        error = registry("norm").entry("halfnorm").error
        assert error.startswith("norm 'halfnorm' from acme-half 1.0 (acme_half:UnitNorm) is broken: ") and \
            "not_a_module_anywhere" in error and "claimed" not in error, error


def test_reloading_a_plugins_module_gives_its_new_class(install, scratch_registries):
    import importlib

    install("acme-self", "1.0", {"gptkit.norm": {"selfnorm": "acme_reload:UnitNorm"}}, {"acme_reload": """
        from gptkit.components import Norm, register

        @register("norm", "selfnorm")
        class UnitNorm(Norm):
            def forward(self, x):
                return x
    """})
    before = registry("norm").get("selfnorm")
    module = importlib.reload(sys.modules["acme_reload"])  # a notebook's edit of the plugin it develops
    assert module.UnitNorm is not before and registry("norm").get("selfnorm") is module.UnitNorm


def test_a_plugin_may_re_export_a_class_another_package_registers(install, scratch_registries):
    """The entry point's module imports the class from a package of another name, whose import registers it."""
    install("acme-norms", "1.0", {"gptkit.norm": {"mine": "acme_reexport:Mine"}}, {
        "acme_reexport": "from acme_core_norms import Mine\n",
        "acme_core_norms": """
            from gptkit.components import Norm, register

            @register("norm", "mine")
            class Mine(Norm):
                def forward(self, x):
                    return x
        """})
    for _ in range(2):
        entry = registry("norm").entry("mine")
        assert entry.error is None and entry.source == "acme-norms 1.0", entry.error
        assert entry.obj is sys.modules["acme_core_norms"].Mine

    cell = type("Mine", (entry.obj,), {"__module__": "__main__"})  # a notebook's, once the plugin is loaded
    with pytest.raises(RegistryError, match="^norm 'mine' is claimed by acme-norms 1.0 already"):
        registry("norm").register("mine", cell)
    assert registry("norm").get("mine") is entry.obj


def test_a_namespace_neighbour_registering_what_a_plugin_declares_is_a_clash(install, tmp_path, scratch_registries):
    """acme.other shares the top-level name acme with acme.norms, not its entry point."""
    install("acme-norms", "1.0", {"gptkit.norm": {"nsnorm": "acme.norms:UnitNorm"}})
    namespace = tmp_path / "site" / "acme"  # no __init__.py: a namespace package
    (namespace / "other").mkdir(parents=True)
    (namespace / "other" / "__init__.py").write_text(textwrap.dedent("""
        from gptkit.components import Norm, register

        @register("norm", "nsnorm")
        class Other(Norm):
            def forward(self, x):
                return x
    """))
    try:
        import acme.other  # noqa: F401
        with pytest.raises(RegistryError, match="norm 'nsnorm' is claimed by .*acme/other/__init__.py and by "
                                                "acme-norms 1.0"):
            registry("norm").get("nsnorm")
    finally:
        for name in ("acme.other", "acme"):
            sys.modules.pop(name, None)


def test_registering_a_name_a_plugin_declares_is_refused_at_once(install, scratch_registries):
    from gptkit.components import Norm

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_unit:UnitNorm"}}, {"acme_unit": NORM})

    def cell(name):  # a class defined in a notebook cell
        cls = type("Mine", (Norm,), {"forward": lambda self, x: x, "__module__": "__main__"})
        return registry("norm").register(name, cls)

    for _ in range(2):  # refused each time, not accepted to fail where a recipe uses it
        with pytest.raises(RegistryError, match=r"^norm 'unitnorm' is claimed by acme-norms 1.2 already; a name "
                                                r"must have one source. Rename the component in .*, or rename the "
                                                r"entry point in acme-norms, or uninstall acme-norms"):
            cell("unitnorm")
    renamed = cell("mynorm")
    assert registry("norm").get("mynorm") is renamed and "acme_unit" not in sys.modules  # refused from metadata alone
    assert registry("norm").find("unitnorm").source == "acme-norms 1.2"


def test_a_local_file_registering_a_name_a_plugin_declares_is_refused_even_unused(install, cli, write_recipe,
                                                                                   tmp_path, scratch_registries):
    """As one registering a built-in's name is: not only once a recipe names it."""
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_unit:UnitNorm"}}, {"acme_unit": NORM})
    (tmp_path / "mine.py").write_text(textwrap.dedent("""
        from gptkit.components import register
        from gptkit.components.norm import RMSNorm

        @register("norm", "unitnorm")
        class Mine(RMSNorm):
            \"\"\"Mine.\"\"\"
    """))
    recipe = write_recipe(imports=["mine.py"])  # its norm is the default, rmsnorm
    for command in (["validate", recipe], ["check", "norm", "rmsnorm", "--import", tmp_path / "mine.py"]):
        result = cli(*command)
        assert result.exit_code == 2 and "norm 'unitnorm' is claimed by acme-norms 1.2 already; a name must have one " \
            f"source. Rename the component in {tmp_path / 'mine.py'}, or rename the entry point in acme-norms" \
            in result.output, result.output
    listed = json.loads(cli("list", "norm", "--import", tmp_path / "mine.py", "--json").output)
    (row,) = [r for r in listed if r["name"] == "unitnorm"]
    assert row["status"] == "broken" and "is claimed by acme-norms 1.2 already" in row["error"], row
    assert "acme_unit" not in sys.modules  # refused from metadata alone


@pytest.mark.parametrize("value, said", [
    ("acme_unit:UnitNrom", "Its entry point names UnitNrom, which acme_unit does not define (did you mean "
                           "'UnitNorm'?); correct it in acme-norms's pyproject.toml if it is wrong, and install it "
                           "again"),
    ("acme_renamed:UnitNorm", "Its entry point names the module acme_renamed, which is not there; correct it in "
                              "acme-norms's pyproject.toml if it is wrong, and install it again"),
    ("acme_unit.UnitNorm", "Its entry point names the module acme_unit.UnitNorm: a class is written module:Class "
                           "(acme_unit:UnitNorm); correct it in"),
    ("acme_unit", "Its entry point names the module acme_unit, not a class in it: write it as module:Class; correct "
                  "it in"),
])
def test_an_entry_point_naming_what_is_not_there_says_to_correct_and_reinstall(install, value, said):
    """A module or class renamed in the code, not in the metadata (or installed before the rename)."""
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": value}}, {"acme_unit": NORM})
    error = registry("norm").entry("unitnorm").error
    assert error.startswith(f"norm 'unitnorm' from acme-norms 1.2 ({value}) is broken: ") and said in error, error
    assert error.endswith(" (GPTKIT_NO_PLUGINS=1 turns plugins off)")


def test_an_attribute_error_of_a_plugins_own_code_is_not_blamed_on_its_entry_point(install):
    lazy = "import torch\n\ndef __getattr__(name):\n    return torch.nn.NoSuchLayerInThisTorch\n"
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_lazy:UnitNorm"}}, {"acme_lazy": lazy})
    error = registry("norm").entry("unitnorm").error
    assert "NoSuchLayerInThisTorch" in error and "entry point" not in error and \
        error.endswith("Fix or uninstall that package (GPTKIT_NO_PLUGINS=1 turns plugins off)"), error


def test_a_plugin_whose_own_import_fails_is_told_to_be_fixed(install):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_unit:UnitNorm"}},
            {"acme_unit": "import acme_missing_dependency\n" + textwrap.dedent(NORM)})
    error = registry("norm").entry("unitnorm").error
    assert "ModuleNotFoundError: No module named 'acme_missing_dependency'" in error and \
        error.endswith("Fix or uninstall that package (GPTKIT_NO_PLUGINS=1 turns plugins off)"), error


def test_an_entry_point_in_no_kinds_group_is_reported(install, cli, write_recipe):
    install("acme-typo", "1.0", {"gptkit.norms": {"unitnorm": "acme_typo:UnitNorm"}}, {"acme_typo": NORM})
    result = cli("list")
    assert result.exit_code == 0
    assert ("warning: acme-typo 1.0 declares 'unitnorm' in entry point group 'gptkit.norms', which is not a "
            "component kind (did you mean 'norm'?)") in result.stderr
    assert any(r["kind"] == "norms" and r["status"] == "broken" for r in json.loads(cli("list", "--json").output))
    assert "'gptkit.norms'" in cli("list", "norm").stderr  # where its author looks for it
    assert cli("list", "attention").stderr == ""
    for command in (["show", "norm", "unitnorm"], ["validate", write_recipe(), "--set", "model.norm=unitnorm"]):
        said = cli(*command).output  # not "available once it is installed": it is
        assert "unknown norm 'unitnorm'" in said and ("; acme-typo 1.0 declares 'unitnorm' in entry point group "
                                                      "'gptkit.norms', which is not a component kind (did you mean "
                                                      "'norm'?)") in said, said
        assert said.rstrip().endswith("fix the group in its pyproject.toml and install it again"), said
    said = cli("show", "attention", "unitnorm").output  # gptkit.norms means a norm: no hint for an attention
    assert "unknown attention 'unitnorm'" in said and "entry point group" not in said, said


def test_plugins_can_be_switched_off(install, cli, monkeypatch):
    install("acme-norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_off:UnitNorm"}}, {"acme_off": NORM})
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")
    assert "unitnorm" not in registry("norm").names()
    with pytest.raises(RegistryError, match="unknown norm 'unitnorm'"):
        registry("norm").get("unitnorm")
    monkeypatch.delenv("GPTKIT_NO_PLUGINS")
    assert "unitnorm" in cli("list", "norm").output

    result = cli("--no-plugins", "list", "norm")  # sets GPTKIT_NO_PLUGINS, which monkeypatch restores after the test
    assert result.exit_code == 0 and "unitnorm" not in result.output and "rmsnorm" in result.output


@pytest.mark.parametrize("value,on", [("", True), ("0", True), ("false", True), ("False", True), ("no", True),
                                      ("NO", True), ("off", True), (" Off ", True), ("1", False), ("true", False),
                                      ("yes", False), ("on", False), ("2", False)])
def test_the_usual_false_spellings_of_gptkit_no_plugins_keep_plugins_on(install, monkeypatch, value, on):
    from gptkit import plugins

    install("acme-norms", "1.0", {"gptkit.norm": {"unitnorm": "acme_spelled:UnitNorm"}}, {"acme_spelled": NORM})
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", value)
    assert plugins.enabled() is on
    assert ("unitnorm" in registry("norm").names()) is on


def test_a_wrong_typed_params_default_is_broken_without_pydantic_warnings(install, cli):
    install("acme-typed", "0.1", {"gptkit.norm": {"typednorm": "acme_typed:Bad"}}, {"acme_typed": (
        "from gptkit.components import Norm, Params\n"
        "class P(Params):\n    hidden: int = 'abc'\n"
        "class Bad(Norm):\n    Params = P\n    forward = lambda self, x: x\n")})
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = registry("norm").entry("typednorm")
    assert entry.error == ("norm 'typednorm' from acme-typed 0.1 (acme_typed:Bad) is broken: its Params' defaults "
                           "do not survive being written to a recipe and read back: hidden: Input should be a valid "
                           "integer (its default is 'abc'). Fix or uninstall that package (GPTKIT_NO_PLUGINS=1 turns "
                           "plugins off)")
    assert [str(w.message) for w in caught] == []
    forget_plugins()  # load it again, through the command line
    for args in (("list",), ("list", "attention"), ("show", "norm", "typednorm")):
        result = cli(*args)
        assert "Warning" not in result.stderr and "pydantic" not in result.stderr, (args, result.stderr)


def test_no_plugins_reaches_bench_workers(install, cli, write_recipe, monkeypatch):
    # Workers are started afresh (spawn): the switch must reach them, or they meet this clash with a default.
    install("acme-clash", "2.0", {"gptkit.attention": {"flash": "acme_flash:Flash"}})
    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "0")  # plugins on, and restored after what --no-plugins sets
    result = cli("--no-plugins", "bench", write_recipe(), "--steps", "1", "--warmup", "1", "--rounds", "1")
    assert result.exit_code == 0, result.output


def test_show_describes_a_plugin_in_full(install, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_show:UnitNorm"}}, {"acme_show": NORM})
    result = cli("show", "norm", "unitnorm")
    assert result.exit_code == 0, result.output
    assert "source:     acme-norms 1.2" in result.output
    assert f"defined at: {tmp_path / 'site' / 'acme_show.py'}:9  (acme_show:UnitNorm)" in result.output
    assert "eps: float = 1e-06 (> 0)  keeps the division finite" in result.output
    record = json.loads(cli("show", "norm", "unitnorm", "--json").output)
    assert record["params"] == [{"name": "eps", "type": "float", "default": 1e-6, "constraints": ["> 0"],
                                 "description": "keeps the division finite"}]
    assert cli("show", "unitnorm").output == result.output  # the one kind with that name


def test_show_without_a_kind_finds_the_one_that_has_the_name(cli, temporary_component):
    from gptkit.components.feedforward import MLP

    assert cli("show", "rope").output.startswith("positional 'rope'\n")
    said = cli("show", "norm")
    assert said.exit_code == 2 and "error: give the norm's name too: gptkit show norm NAME, NAME one of: " \
        in said.output and "layernorm, rmsnorm" in said.output, said.output
    said = cli("show", "rpoe")
    assert said.exit_code == 2 and "error: no component is named 'rpoe' (did you mean 'rope'?)" in said.output
    temporary_component("feedforward", "rope", MLP)  # two kinds with one name: which is meant?
    said = cli("show", "rope")
    assert said.exit_code == 2 and "error: 'rope' names a positional and a feedforward; give the kind too" \
        in said.output, said.output


def test_show_says_whether_an_attention_supports_the_key_value_cache(cli, temporary_component):
    from gptkit.components.attention import Attention, FlashAttention
    from gptkit.conformance import check_component

    class ForwardAlone(FlashAttention):  # inherits the flag, not a forward that takes the cache
        def forward(self, x):
            return super().forward(x)

    class Recomputes(Attention):
        def attend(self, q, k, v, bias):
            return v

    class OwnForward(Attention):  # neither the flag nor the cache argument
        def forward(self, x):
            return self.c_proj(x)

    temporary_component("attention", "forward_alone", ForwardAlone)
    temporary_component("attention", "recomputes", Recomputes)
    temporary_component("attention", "own_forward", OwnForward)
    flag = "its supports_kv_cache is True, but its forward takes no cache: write forward(x, cache=None), or only " \
        "attend() and let the base forward cache"
    no_flag = "it does not set supports_kv_cache = True: set it if its attend handles fewer queries than keys, the " \
        "queries being the last positions"
    neither = "it neither sets supports_kv_cache = True nor takes a cache: write forward(x, cache=None) and set the " \
        "flag, or write only attend() and set it if attend handles fewer queries than keys"
    for name, why in (("flash", None), ("forward_alone", flag), ("recomputes", no_flag), ("own_forward", neither)):
        shown = cli("show", "attention", name).output
        assert ("  kv cache:   yes (sampling feeds it one token at a time)" if why is None else
                f"  kv cache:   no (sampling recomputes the whole context for every token; {why})") \
            in shown.splitlines(), shown
        record = json.loads(cli("show", "attention", name, "--json").output)
        assert record["supports_kv_cache"] is (why is None) and record.get("kv_cache_note") == why
        if why:  # and the conformance kit says why its cache check does not apply
            (row,) = [r for r in check_component("attention", name) if r.check == "kv cache"]
            assert row.status == "n/a" and row.detail == (f"the attention takes no key/value cache ({why}); "
                                                          "generation recomputes the context"), row
    assert "kv cache" not in cli("show", "norm", "rmsnorm").output
    assert "supports_kv_cache" not in json.loads(cli("show", "norm", "rmsnorm", "--json").output)


def test_list_and_show_give_a_default_factorys_value_as_valid_json(install, cli):
    install("acme-norms", "1.0", {"gptkit.norm": {"facnorm": "acme_fac:FacNorm"}}, {"acme_fac": NORM + """
    class FacParams(Params):
        widths: list[int] = Field(default_factory=lambda: [1, 2])
        doubled: list[int] = Field(default_factory=lambda data: data["widths"] * 2)
        cap: float = 1.5

    class FacNorm(UnitNorm):
        Params = FacParams
"""})
    assert "widths: list[int] = [1, 2]" in cli("show", "norm", "facnorm").output
    strict = {"parse_constant": lambda c: pytest.fail(f"{c} is not JSON")}
    record = next(r for r in json.loads(cli("list", "norm", "--json").output, **strict) if r["name"] == "facnorm")
    assert [p["default"] for p in record["params"]] == [[1, 2], [1, 2, 1, 2], 1.5]
    assert json.loads(cli("show", "norm", "facnorm", "--json").output, **strict)["params"] == record["params"]


def test_check_prints_a_table_and_fails_a_non_causal_attention(install, cli):
    install("acme-attn", "0.1", {"gptkit.attention": {"peek": "acme_peek:Peek"}}, {"acme_peek": """
        import torch.nn.functional as F
        from gptkit.components import Attention

        class Peek(Attention):
            '''Attends to the future too: not causal.'''

            def attend(self, q, k, v, bias):
                return F.scaled_dot_product_attention(q, k, v)
    """})
    result = cli("check", "attention", "peek")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("attention 'peek' from acme-attn 0.1")
    assert any(line.split()[:2] == ["construct", "PASS"] for line in lines)
    assert any(line.split()[:2] == ["causal", "FAIL"] for line in lines)
    assert "changing a later token changed an earlier output" in result.output
    assert cli("check", "norm", "rmsnorm").exit_code == 0


def test_a_check_that_raises_anything_but_value_error_is_one_error_naming_the_component(install, cli, write_recipe, tmp_path):
    install("acme-pos", "0.2", {"gptkit.positional": {"buggy": "acme_buggy:Buggy"}}, {"acme_buggy": """
        from gptkit.components import Positional

        class Buggy(Positional):
            @classmethod
            def check(cls, config, params):
                return config.head_size  # a typo: GPTConfig has head_dim
    """})
    report = ("positional 'buggy' from acme-pos 0.2 (acme_buggy:Buggy) is broken: its check(config, params) raised "
              "AttributeError: 'GPTConfig' object has no attribute 'head_size'")
    for args in (("check", "positional", "buggy"), ("run", write_recipe(model={"positional": "buggy"}), "--runs-dir", tmp_path)):
        result = cli(*args)
        assert result.exit_code == 2 and report in result.output and "Traceback" not in result.output, result.output
    assert "model.positional: " + report in result.output
    result = cli("check", "attention", "naive")  # a partner with a broken check is left out, not blamed on naive
    assert result.exit_code == 0, result.output


PICKY = """
    from pydantic import field_validator, model_validator
    from gptkit.components import Norm, Params

    class PickyParams(Params):
        eps: float = 1e-6
        mode: str = "unit"

        @field_validator("eps")
        @classmethod
        def _eps(cls, value):
            if value > 1:
                raise TypeError("eps must be small")  # a bug: ValueError is how a component refuses a value
            return value

        @model_validator(mode="after")
        def _mode(self):
            return {"unit": self}[self.mode]  # a bug: KeyError for any other mode

    class Picky(Norm):
        Params = PickyParams

        def forward(self, x):
            return x
"""


@pytest.mark.parametrize("params, error", [({"eps": 2.0}, "TypeError: eps must be small"),
                                           ({"mode": "half"}, "KeyError: 'half'")])
def test_params_that_raise_anything_but_value_error_are_one_error_naming_the_component(
        install, cli, write_recipe, params, error):
    install("acme-picky", "0.1", {"gptkit.norm": {"picky": "acme_picky:Picky"}}, {"acme_picky": PICKY})
    report = (f"norm 'picky' from acme-picky 0.1 (acme_picky:Picky) is broken: its Params raised {error}; "
              "refuse a bad value by raising ValueError")
    result = cli("validate", write_recipe(model={"norm": {"name": "picky", **params}}))
    assert result.exit_code == 2 and f"model.norm: {report}" in result.output, result.output
    assert "Traceback" not in result.output
    key, value = next(iter(params.items()))
    result = cli("check", "norm", "picky", "--param", f"{key}={value}")
    assert result.exit_code == 2 and result.output == f"error: {report}\n", result.output
    assert cli("validate", write_recipe(model={"norm": {"name": "picky", "eps": 0.5}})).exit_code == 0


def test_an_entry_point_name_a_recipe_could_not_write_is_the_plugins_error(install, cli):
    install("acme-spaces", "1.0", {"gptkit.attention": {"bad name": "acme_spaces:Thing"}},
            {"acme_spaces": "raise RuntimeError('imported')\n"})
    entry = registry("attention").entry("bad name")
    assert entry.error == (
        "attention 'bad name' from acme-spaces 1.0 (acme_spaces:Thing) is broken: its entry point 'bad name' in "
        "group gptkit.attention: attention name 'bad name' must be a word such as 'my_norm' (ASCII letters, digits, "
        "_ and -, starting with a letter); rename that entry point in acme-spaces's metadata (GPTKIT_NO_PLUGINS=1 turns plugins off)")
    assert "acme_spaces" not in sys.modules  # refused before it is imported
    listed = cli("list", "attention")
    assert listed.exit_code == 0 and f"BROKEN: {entry.error}" in listed.output
    with pytest.raises(RegistryError, match="must be a word"):  # the same rule as register's
        registry("attention").register("bad name", registry("attention").get("naive"))


@pytest.mark.parametrize("config", ["", "model_config = ConfigDict(arbitrary_types_allowed=True)"])
def test_a_params_field_type_pydantic_cannot_handle_is_one_line(install, cli, config):
    install("acme-tensor", "0.1", {"gptkit.norm": {"tensornorm": "acme_tensor:TensorNorm"}}, {"acme_tensor": f"""
        import torch
        from pydantic import ConfigDict
        from gptkit.components import Norm, Params

        class TensorParams(Params):
            {config}
            scale: torch.Tensor | None = None

        class TensorNorm(Norm):
            Params = TensorParams

            def forward(self, x):
                return x
    """})
    error = next(r for r in json.loads(cli("list", "norm", "--json").output) if r["name"] == "tensornorm")["error"]
    assert "\n" not in error and "errors.pydantic.dev" not in error, error
    assert error.startswith("norm 'tensornorm' from acme-tensor 0.1 (acme_tensor:TensorNorm) is broken: ")
    assert ("a field of type torch.Tensor is not one pydantic can check and write to a recipe; give Params "
            "fields plain types (int, float, bool, str, Literal, lists of those)") in error
    listed = cli("list", "norm").output
    assert f"BROKEN: {error}\n" in listed and "For further information" not in listed


def code_hash(module: str) -> str:
    """What a run records of the code of a plugin that is the one file `module`.py (see plugins.code_sha256)."""
    import hashlib
    import importlib.util

    return hashlib.sha256(Path(importlib.util.find_spec(module).origin).read_bytes()).hexdigest()[:12]  # as a local file


def upgrade(install, tmp_path, module, version):
    """acme-norms, installed at 1.2, replaced by `version` (the same code)."""
    shutil.rmtree(tmp_path / "site" / "acme_norms-1.2.dist-info")
    install("acme-norms", version, {"gptkit.norm": {"unitnorm": f"{module}:UnitNorm"}}, {module: NORM})


def test_resuming_with_another_plugin_version_warns(install, write_recipe, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_resumed:UnitNorm"}}, {"acme_resumed": NORM})
    runs = tmp_path / "runs"
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2})
    assert cli("run", recipe, "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    same = cli("run", "--resume", run, "--set", "train.max_steps=3")
    assert same.exit_code == 0 and "warning" not in same.output, same.output
    upgrade(install, tmp_path, "acme_resumed", "1.3")
    result = cli("run", "--resume", run, "--set", "train.max_steps=4", "-q")  # said even when quiet, on stderr
    assert result.exit_code == 0, result.output
    assert (f"warning: model.norm (unitnorm) was trained with acme-norms 1.2 and now comes from acme-norms 1.3; "
            f"resuming {run} with it\n") in result.output


def test_a_new_version_adding_a_parameter_at_its_default_resumes_old_runs(install, write_recipe, cli, tmp_path):
    """The stored recipe predates the parameter: it is not a change the user made, nor one to undo."""
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_grown:UnitNorm"}}, {"acme_grown": NORM})
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2})
    assert cli("run", recipe, "--runs-dir", tmp_path / "runs").exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    shutil.rmtree(tmp_path / "site" / "acme_norms-1.2.dist-info")
    grown = NORM.replace("        eps: float", "        center: bool = Field(False, description='new in 1.3')\n        eps: float")
    install("acme-norms", "1.3", {"gptkit.norm": {"unitnorm": "acme_grown:UnitNorm"}}, {"acme_grown": grown})
    sys.modules.pop("acme_grown", None)
    forget_plugins()
    result = cli("run", "--resume", run, "--set", "train.max_steps=3", "-q")
    assert result.exit_code == 0, result.output
    assert "was trained with acme-norms 1.2 and now comes from acme-norms 1.3" in result.stderr, result.output
    changed = cli("run", "--resume", run, "--set", "train.max_steps=4", "--set", "model.norm.center=true")
    assert changed.exit_code == 2 and "model.norm.center: false -> true" in changed.output, changed.output


def test_a_new_version_that_renamed_a_parameter_is_named_as_the_cause(install, write_recipe, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_renamed:UnitNorm"}}, {"acme_renamed": NORM})
    recipe = write_recipe(model={"norm": {"name": "unitnorm", "eps": 1e-5}}, train={"max_steps": 2})
    assert cli("run", recipe, "--runs-dir", tmp_path / "runs").exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    shutil.rmtree(tmp_path / "site" / "acme_norms-1.2.dist-info")
    renamed = NORM.replace("        eps: float", "        epsilon: float").replace("self.params.eps", "self.params.epsilon")
    install("acme-norms", "1.3", {"gptkit.norm": {"unitnorm": "acme_renamed:UnitNorm"}}, {"acme_renamed": renamed})
    sys.modules.pop("acme_renamed", None)
    forget_plugins()
    hint = ("(model.norm (unitnorm) was trained with acme-norms 1.2 and now comes from acme-norms 1.3: its parameters "
            "may differ from that version's; install the version the run was trained with to use the run)")
    for command in (["run", "--resume", run, "--set", "train.max_steps=3"], ["sample", run, "--tokens", "3"]):
        result = cli(*command)
        assert result.exit_code == 2 and "model.norm.eps: unknown key" in result.output, result.output
        assert result.output.rstrip().endswith(hint), result.output


def edit(tmp_path, module):
    """The plugin file `module`.py edited in place, as with `pip install -e`: the same version, other code."""
    path = tmp_path / "site" / f"{module}.py"
    path.write_text(path.read_text().replace("unit length", "length one"))
    sys.modules.pop(module, None)
    forget_plugins()  # as a new process would see it


def test_a_plugins_record_holds_a_hash_of_its_whole_package(install, tmp_path):
    install("acme-pkg", "1.0", {"gptkit.norm": {"pkgnorm": "acme_pkg.norm:UnitNorm"}})
    package = tmp_path / "site" / "acme_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "norm.py").write_text(textwrap.dedent(NORM))
    (package / "helpers.py").write_text("SCALE = 1\n")
    first = registry("norm").entry("pkgnorm").origin
    assert first.startswith("acme-pkg 1.0 (sha256 ") and len(first) == len("acme-pkg 1.0 (sha256 123456789abc)")
    (package / "helpers.py").write_text("SCALE = 2\n")  # not the class's module, but code it may use
    assert registry("norm").entry("pkgnorm").origin == first  # read once per process
    forget_plugins()
    assert registry("norm").entry("pkgnorm").origin != first
    sys.modules.pop("acme_pkg.norm", None)
    sys.modules.pop("acme_pkg", None)


def test_a_plugin_in_a_namespace_package_is_hashed_without_its_neighbours(install, tmp_path):
    """acme.norms and acme.other are two distributions under one namespace: editing one is not the other's
    change."""
    install("acme-norms", "1.0", {"gptkit.norm": {"nsnorm": "acme.norms:UnitNorm"}})
    namespace = tmp_path / "site" / "acme"  # no __init__.py: a namespace package
    (namespace / "norms").mkdir(parents=True)
    (namespace / "norms" / "__init__.py").write_text(textwrap.dedent(NORM))
    (namespace / "other").mkdir()
    (namespace / "other" / "__init__.py").write_text("X = 1\n")
    first = registry("norm").entry("nsnorm").origin
    (namespace / "other" / "__init__.py").write_text("X = 2\n")
    forget_plugins()
    assert registry("norm").entry("nsnorm").origin == first
    for name in ("acme.norms", "acme"):
        sys.modules.pop(name, None)


def test_resuming_after_a_plugins_code_changed_warns(install, write_recipe, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_edited:UnitNorm"}}, {"acme_edited": NORM})
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2}), "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    before = code_hash("acme_edited")
    edit(tmp_path, "acme_edited")
    result = cli("run", "--resume", run, "--set", "train.max_steps=3", "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: model.norm (unitnorm) was trained with acme-norms 1.2, whose code (one hash of its package's files, or of its module's file) has changed since (sha256 "
            f"{before} -> {code_hash('acme_edited')}); resuming {run} with it\n") in result.output


def test_sampling_and_load_model_warn_of_another_plugin_version_or_code(install, write_recipe, cli, tmp_path):
    from gptkit.training.checkpoint import PluginChangedWarning, load_model

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_sampled:UnitNorm"}}, {"acme_sampled": NORM})
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2}), "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    same = cli("sample", run, "--tokens", "3")
    assert same.exit_code == 0 and "warning" not in same.stderr, same.output
    before = code_hash("acme_sampled")
    edit(tmp_path, "acme_sampled")
    changed = (f"model.norm (unitnorm) was trained with acme-norms 1.2, whose code (one hash of its package's files, or of its module's file) has changed since (sha256 {before} "
               f"-> {code_hash('acme_sampled')}); sampling with it")
    result = cli("sample", run, "--tokens", "3")
    assert result.exit_code == 0 and result.stderr.startswith(f"warning: {changed}\n"), result.output
    with pytest.warns(PluginChangedWarning, match=re.escape(changed)):
        load_model(run)
    upgrade(install, tmp_path, "acme_sampled", "1.3")
    result = cli("sample", run, "--tokens", "3")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: model.norm (unitnorm) was trained with acme-norms 1.2 and now comes from "
                                    "acme-norms 1.3; sampling with it\n"), result.output


def test_a_run_recorded_before_plugins_code_was_hashed_is_the_same_source(install, write_recipe):
    from gptkit.registry import record_change
    from gptkit.training.checkpoint import plugin_changes

    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_old:UnitNorm"}}, {"acme_old": NORM})
    recipe = load_recipe(write_recipe(model={"norm": "unitnorm"}))
    assert recipe.plugin_sources()["model.norm"].startswith("unitnorm from acme-norms 1.2 (sha256 ")
    assert plugin_changes({"model.norm": "unitnorm from acme-norms 1.2"}, recipe) == []
    assert plugin_changes({"model.norm": "unitnorm from acme-norms 1.2 (sha256 000000000000)"}, recipe) == [
        f"model.norm (unitnorm) was trained with acme-norms 1.2, whose code (one hash of its package's files, or of its module's file) has changed since (sha256 000000000000 -> "
        f"{code_hash('acme_old')})"]
    assert record_change("n from a 1 (sha256 0123456789ab)", "n from a 1") is None  # only where both have a hash


def test_resuming_a_run_whose_plugin_is_gone_says_which_package_it_was(install, write_recipe, cli, tmp_path,
                                                                       monkeypatch):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_left:UnitNorm"}}, {"acme_left": NORM})
    install("acme-opt", "0.5", {"gptkit.optimizer": {"plainsgd": "acme_opt:PlainSGD"}}, {"acme_opt": """
        import torch
        from gptkit.components import Optimizer

        class PlainSGD(Optimizer):
            def build(self, groups, lr):
                return torch.optim.SGD(groups, lr=lr)
    """})
    runs = tmp_path / "runs"
    recipe = write_recipe(model={"norm": "unitnorm"}, train={"max_steps": 2, "optimizer": "plainsgd"})
    result = cli("run", recipe, "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    norm = f"model.norm: unitnorm from acme-norms 1.2 (sha256 {code_hash('acme_left')})"
    # resuming needs both, sampling the model's
    trained = f"{norm}; train.optimizer: plainsgd from acme-opt 0.5 (sha256 {code_hash('acme_opt')})"

    monkeypatch.setenv("GPTKIT_NO_PLUGINS", "1")
    off = "unset GPTKIT_NO_PLUGINS (or leave out --no-plugins) to use them)"
    for args, used in ((("run", "--resume", run), trained), (("sample", run), norm)):
        result = cli(*args)
        assert result.exit_code == 2 and "unknown norm 'unitnorm'" in result.output, result.output
        assert f"(the run was trained with {used}: {off}" in result.output and "installed" not in result.output
        assert "plugins are turned off" in result.output.split("(the run was trained")[0], result.output  # said once
    assert missing_plugins({"model.norm": norm.partition(": ")[2]}).endswith(  # from Python
        ": unset GPTKIT_NO_PLUGINS to use them)")
    monkeypatch.delenv("GPTKIT_NO_PLUGINS")

    shutil.rmtree(tmp_path / "site")  # uninstalled
    sys.modules.pop("acme_left", None)
    sys.modules.pop("acme_opt", None)
    forget_plugins()
    result = cli("run", "--resume", run, "--set", "train.max_steps=4")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "unknown norm 'unitnorm'" in result.output
    assert f"(the run was trained with {trained}: install acme-norms==1.2 and acme-opt==0.5, the versions it " \
        "trained with)" in result.output


LOCAL = """
    from gptkit.components import Norm, register

    @register("norm", "localnorm")
    class UnitNorm(Norm):
        '''Scale every vector to unit length.'''

        def forward(self, x):
            return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
"""


def test_recipe_imports_local_files(write_recipe, cli, tmp_path, scratch_registries):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "local_norm.py").write_text(textwrap.dedent(LOCAL))
    recipe = write_recipe(model={"norm": "localnorm"}, imports=["mine/local_norm.py"])
    r = load_recipe(recipe)
    assert r.model.norm.name == "localnorm" and r.imports == [tmp_path / "mine" / "local_norm.py"]
    assert load_recipe(recipe) == r  # a file is imported once per process, so loading again works
    assert registry("norm").find("localnorm").source == str(tmp_path / "mine" / "local_norm.py")

    runs = tmp_path / "runs"
    assert cli("run", recipe, "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    assert cli("sample", run, "--tokens", "5").exit_code == 0  # the checkpoint's recipe imports it again


def test_a_local_file_also_imported_as_a_module_and_then_edited_is_taken_anew(write_recipe, tmp_path, monkeypatch,
                                                                              scratch_registries):
    """A notebook's `import local_norm` beside a recipe's imports of the same file: an edit, even one that
    moves the class down a line, replaces the class on the next load_recipe, as without the import."""
    file = tmp_path / "local_norm.py"
    file.write_text(textwrap.dedent(LOCAL))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "local_norm", raising=False)
    import local_norm

    monkeypatch.setitem(sys.modules, "local_norm", local_norm)  # dropped after the test
    recipe = write_recipe(model={"norm": "localnorm"}, imports=["local_norm.py"])
    load_recipe(recipe)
    assert registry("norm").get("localnorm") is local_norm.UnitNorm  # the same code: the first import kept
    file.write_text("# edited\n" + textwrap.dedent(LOCAL).replace("clamp(min=1e-6)", "clamp(min=1e-3)"))
    load_recipe(recipe)
    taken = registry("norm").get("localnorm")
    assert taken is not local_norm.UnitNorm and "1e-3" in inspect.getsource(taken.forward)


def test_resuming_after_a_local_component_file_changed_warns(write_recipe, cli, tmp_path, scratch_registries):
    import hashlib

    file = tmp_path / "local_norm.py"
    file.write_text(textwrap.dedent(LOCAL))
    recipe = write_recipe(model={"norm": "localnorm"}, imports=["local_norm.py"], train={"max_steps": 2})
    assert cli("run", recipe, "--runs-dir", tmp_path / "runs").exit_code == 0
    (run,) = (tmp_path / "runs").iterdir()
    before = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    assert json.loads((run / "summary.json").read_text())["plugins"] == {
        "model.norm": f"localnorm from {file} (sha256 {before})"}
    file.write_text(textwrap.dedent(LOCAL).replace("unit length", "length one"))  # edited since
    after = hashlib.sha256(file.read_bytes()).hexdigest()[:12]
    result = cli("run", "--resume", run, "--set", "train.max_steps=3", "-q")
    assert result.exit_code == 0, result.output
    assert (f"warning: model.norm (localnorm) was trained with {file}, whose code has changed since (sha256 {before} -> "
            f"{after}); resuming {run} with it\n") in result.output


def test_resuming_after_a_module_a_local_file_imports_changed_warns(write_recipe, tmp_path):
    """A local file's code is the file and the modules beside it that it imports (a package too), theirs
    as well; each command is a process of its own, as it is for a user."""
    (tmp_path / "norm_file.py").write_text("import json\nfrom scale import unit\nfrom gptkit.components import Norm, "
                                           "register\n\n@register('norm', 'helpednorm')\nclass Helped(Norm):\n"
                                           "    def forward(self, x):\n        return unit(x)\n")
    (tmp_path / "scale.py").write_text("import eps_pkg.values\n\ndef unit(x):\n"
                                       "    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps_pkg.values.EPS)\n")
    (tmp_path / "eps_pkg").mkdir()
    (tmp_path / "eps_pkg" / "__init__.py").write_text("")
    (tmp_path / "eps_pkg" / "values.py").write_text("EPS = 1e-6\n")
    recipe = write_recipe(model={"norm": "helpednorm"}, imports=["norm_file.py"], train={"max_steps": 2})

    def gptkit(*args):
        done = subprocess.run([sys.executable, "-m", "gptkit", *map(str, args)], capture_output=True, text=True,
                              cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stderr

    assert gptkit("run", recipe, "--runs-dir", tmp_path / "runs", "-q") == ""
    (run,) = (tmp_path / "runs").iterdir()
    assert gptkit("run", "--resume", run, "--set", "train.max_steps=3", "-q") == ""  # nothing changed
    for steps, file in enumerate(("scale.py", "eps_pkg/values.py"), start=4):
        (tmp_path / file).write_text((tmp_path / file).read_text() + "# edited\n")
        said = gptkit("run", "--resume", run, "--set", f"train.max_steps={steps}", "-q")
        assert f"warning: model.norm (helpednorm) was trained with {tmp_path / 'norm_file.py'}, whose code has " \
            "changed since (sha256 " in said, said


def test_a_run_whose_component_file_is_gone_is_told_to_put_it_back(tmp_path, scratch_registries):
    used = {"model.norm": f"gonenorm from {tmp_path / 'gone.py'} (sha256 0123456789ab)"}
    assert missing_plugins(used) == f"\n(the run was trained with model.norm: {used['model.norm']}: that file is gone: put it back)"
    (tmp_path / "gone.py").write_text("")  # there again, but no longer registering the component
    assert missing_plugins(used).endswith(": registered in Python, not installed: register it in this process first "
                                          "(run or import that code))")
    plugins.import_file(tmp_path / "gone.py")  # run here (a recipe's imports), and registering it no more
    assert missing_plugins(used).endswith(": that file, run here, registers it no more: was the component renamed "
                                          "or removed since the run?)")


FOLDER, FIFO = object(), object()


@pytest.mark.parametrize("name,source,fragment", [
    ("nothere.py", None, "component file {dir}/nothere.py not found"),
    ("oops.py", "x = 1\nraise RuntimeError('half done')\n", "{dir}/oops.py:2: RuntimeError: half done"),
    ("oops.py", "def f(:\n", "{dir}/oops.py:1: SyntaxError:"),
    ("oops.py", "from gptkit.components import Norm, register\n@register('norm', 'rmsnorm')\nclass R(Norm):\n    forward = lambda self, x: x\n",
     "{dir}/oops.py:2: norm 'rmsnorm' is registered twice: RMSNorm by built-in at"),
    ("oops.py", "from gptkit.components import Norm, register\n\n@register('nrom', 'mine')\nclass R(Norm):\n    pass\n",
     "{dir}/oops.py:3: unknown component kind 'nrom' (did you mean 'norm'?)"),
    ("oops.py", "import sys\nsys.exit(3)\n", "{dir}/oops.py:2: SystemExit: 3"),
    ("ok.yaml", "imports: []\n", "component file {dir}/ok.yaml must be a .py file"),
    ("mine", FOLDER, "component file {dir}/mine is a directory, not a .py file"),
    ("fifo.py", FIFO, "component file {dir}/fifo.py is not a regular file"),
])
def test_errors_in_imported_files_name_the_file(write_recipe, cli, tmp_path, scratch_registries, name, source, fragment):
    if source is FOLDER:
        (tmp_path / name).mkdir()
    elif source is FIFO:
        os.mkfifo(tmp_path / name)
    elif source is not None:
        (tmp_path / name).write_text(source)
    result = cli("run", write_recipe(imports=[name]), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert ": imports: " in result.output and fragment.format(dir=tmp_path) in result.output


def test_an_error_in_a_module_an_imported_file_imports_names_both_lines(write_recipe, cli, tmp_path,
                                                                        scratch_registries, monkeypatch):
    monkeypatch.delitem(sys.modules, "oops_helper", raising=False)
    (tmp_path / "oops_helper.py").write_text("X = 1\n\nY = 1 / 0\n")
    (tmp_path / "oops.py").write_text("import json\nimport oops_helper\n")
    result = cli("validate", write_recipe(imports=["oops.py"]))
    assert result.exit_code == 2 and f"imports: {tmp_path}/oops.py:2, at oops_helper.py:3: ZeroDivisionError: " \
        "division by zero\n" in result.output, result.output


def test_a_local_file_that_registers_nothing_by_the_name_asked_for_says_so(write_recipe, cli, tmp_path,
                                                                            scratch_registries):
    """README's ReGLU, packaged, declares itself by entry point: as a local file it needs a register call."""
    (tmp_path / "my_components.py").write_text("from gptkit.components import FeedForward\n\n"
                                               "class ReGLU(FeedForward):\n    pass\n")
    said = "; the local file run (my_components.py) registers no feedforward by that name: register its class with " \
           "@register('feedforward', 'reglu')\n"
    for args in (["check", "feedforward", "reglu", "--import", "my_components.py"],
                 ["show", "feedforward", "reglu", "--import", "my_components.py"],
                 ["validate", write_recipe(model={"feedforward": "reglu"}, imports=["my_components.py"])]):
        result = cli(*args)
        assert result.exit_code == 2 and result.output.endswith(said) and "--import FILE.py" not in result.output, \
            result.output


def test_every_imported_file_that_fails_is_named_in_one_error(write_recipe, cli, tmp_path, scratch_registries):
    (tmp_path / "a.py").write_text("raise RuntimeError('first')\n")
    (tmp_path / "b.py").write_text("x = 1\nraise ValueError('second')\n")
    recipe = write_recipe(imports=["a.py", "b.py", "a.py"])  # one listed twice is said once
    result = cli("validate", recipe)
    assert result.exit_code == 2 and re.fullmatch(
        rf"error: {re.escape(str(recipe))} has 2 problems:\n"
        rf"  {re.escape(str(recipe))}:\d+: imports: {re.escape(str(tmp_path))}/a.py:1: RuntimeError: first\n"
        rf"  {re.escape(str(recipe))}:\d+: imports: {re.escape(str(tmp_path))}/b.py:2: ValueError: second\n",
        result.output), result.output


CLASHING = """
    from gptkit.components import Norm, register
    from gptkit.components.attention import FlashAttention

    @register("attention", "flash")
    class MyFlash(FlashAttention):
        pass

    @register("norm", "layernorm")
    class MyNorm(Norm):
        forward = lambda self, x: x

    @register("norm", "fine_norm")
    class Fine(Norm):
        \"\"\"Mine.\"\"\"
        forward = lambda self, x: x
"""


def test_a_local_files_clashes_are_listed_as_broken_and_refused_where_used(cli, tmp_path, scratch_registries):
    """As a plugin's clash with a built-in: `list` and `show` show it, all of a file's clashes; what uses it stops."""
    path = tmp_path / "clashing.py"
    path.write_text(textwrap.dedent(CLASHING))
    checked = cli("check", "norm", "fine_norm", "--import", path)
    assert checked.exit_code == 2 and checked.output.startswith(
        f"error: {path}:5: attention 'flash' is registered twice: FlashAttention by built-in at "), checked.output
    listed = cli("list", "--import", path)
    assert listed.exit_code == 0, listed.output
    for kind, name, cls, builtin, line in (("attention", "flash", "MyFlash", "FlashAttention", 5),
                                           ("norm", "layernorm", "MyNorm", "LayerNorm", 9)):
        assert re.search(rf"  {name}  \[built-in and {re.escape(str(path))}\] +BROKEN: {kind} '{name}' is registered "
                         rf"twice: {builtin} by built-in at \S+ and {cls} by {re.escape(f'{path} at {path}:{line}')}\. "
                         rf"Rename the one in {re.escape(str(path))}\.\n", listed.output), listed.output
    assert re.search(rf"  fine_norm  \[{re.escape(str(path))}\] +Mine\.\n", listed.output), listed.output
    assert cli("show", "norm", "fine_norm", "--import", path).exit_code == 0
    shown = cli("show", "attention", "flash", "--import", path)
    assert shown.exit_code == 2 and shown.output.startswith("error: attention 'flash' is registered twice"), shown.output
    from gptkit.components.norm import LayerNorm  # listing leaves the built-in what the name gives elsewhere
    from gptkit.registry import registry

    assert registry("norm").get("layernorm") is LayerNorm


def test_the_shipped_extras_recipe_trains(cli, tmp_path, corpus):
    try:
        metadata.distribution("gptkit-extras")
    except metadata.PackageNotFoundError:
        pytest.skip("gptkit-extras is not installed (pip install -e plugins/gptkit-extras)")
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "shakespeare-extras.yaml"
    result = cli("run", recipe, "--runs-dir", tmp_path / "runs", "--set", f"data.path={corpus}",
                 "--set", "data.corpus=null", "--set", "data.max_lines=null", "--set", "model.n_layer=1",
                 "--set", "model.n_embd=32", "--set", "model.block_size=32", "--set", "train.max_steps=3",
                 "--set", "train.batch_size=4", "--set", "train.eval_every=3", "--set", "sample.tokens=10")
    assert result.exit_code == 0, result.output
    resolved = (next((tmp_path / "runs").iterdir()) / "recipe.yaml").read_text()
    for name in ("gqa", "geglu", "scalenorm", "t5bias"):
        assert f"name: {name}" in resolved


TYPED = """
    import enum
    from pathlib import Path

    from pydantic import Field

    from gptkit.components import Norm, Params, register


    class Mode(enum.Enum):
        unit = "unit"
        half = "half"


    class TypedParams(Params):
        mode: Mode = Mode.unit
        pair: tuple[int, int] = (1, 2)
        where: Path = Path("/tmp")
        lambda_: float = Field(0.5, alias="lambda")


    @register("norm", "typednorm")
    class TypedNorm(Norm):
        '''Unit length, or half of it.'''

        Params = TypedParams

        def forward(self, x):
            scale = 1.0 if self.params.mode is Mode.unit else 0.5
            return scale * x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
"""


def test_enum_tuple_path_and_alias_parameters_survive_the_saved_recipe(write_recipe, cli, tmp_path, scratch_registries):
    (tmp_path / "typed.py").write_text(textwrap.dedent(TYPED))
    norm = {"name": "typednorm", "mode": "half", "pair": [3, 4], "where": "/var", "lambda": 2.0}
    recipe = write_recipe(model={"norm": norm}, imports=["typed.py"])
    params = load_recipe(recipe).model.norm.params
    assert (params.mode.value, params.pair, str(params.where), params.lambda_) == ("half", (3, 4), "/var", 2.0)
    bad = cli("validate", recipe, "--set", "model.norm.mode=quarter")
    assert bad.exit_code == 2 and "'unit' or 'half'" in bad.output, bad.output
    shown = cli("show", "norm", "typednorm").output
    assert 'mode: \'unit\' | \'half\' = "unit"' in shown and "lambda: float = 0.5" in shown, shown

    runs = tmp_path / "runs"
    assert cli("run", recipe, "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    assert load_recipe(run / "recipe.yaml").model.norm.params == params  # read back as it was written
    assert cli("sample", run, "--tokens", "5").exit_code == 0


ZERO = '''
    from pydantic import Field

    from gptkit.components import Norm, Params, register


    class ZeroParams(Params):
        k: int = Field(0, gt=0)


    @register("norm", "zeronorm")
    class ZeroNorm(Norm):
        """Identity, with a default that its own constraint refuses."""

        Params = ZeroParams

        def forward(self, x):
            return x
'''


def test_a_default_that_breaks_its_own_constraint_fails_at_once(write_recipe, cli, tmp_path, scratch_registries):
    (tmp_path / "zero.py").write_text(textwrap.dedent(ZERO))
    result = cli("validate", write_recipe(model={"norm": "zeronorm"}, imports=["zero.py"]))
    assert result.exit_code == 2 and "norm 'zeronorm': its Params' defaults do not survive being written to a " \
        "recipe and read back: k: Input should be greater than 0 (its default is 0)" in result.output, result.output


def test_a_local_file_may_import_a_module_beside_it(write_recipe, cli, tmp_path, scratch_registries, monkeypatch):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "helpers_for_norms.py").write_text("EPS = 1e-6\n")
    (tmp_path / "mine" / "sibling_norm.py").write_text(textwrap.dedent(LOCAL).replace(
        '"localnorm"', '"siblingnorm"').replace("1e-6", "helpers_for_norms.EPS").replace(
        "from gptkit.components", "import helpers_for_norms\nfrom gptkit.components"))
    monkeypatch.delitem(sys.modules, "helpers_for_norms", raising=False)
    path_before = list(sys.path)
    result = cli("validate", write_recipe(model={"norm": "siblingnorm"}, imports=["mine/sibling_norm.py"]))
    assert result.exit_code == 0, result.output
    assert sys.path == path_before  # the folder was on the path only while the file ran
    sys.modules.pop("helpers_for_norms", None)


def test_a_run_names_the_plugins_it_needs(install, write_recipe, cli, tmp_path):
    install("acme-norms", "1.2", {"gptkit.norm": {"unitnorm": "acme_gone:UnitNorm"}}, {"acme_gone": NORM})
    runs = tmp_path / "runs"
    assert cli("run", write_recipe(model={"norm": "unitnorm"}), "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()
    record = f"unitnorm from acme-norms 1.2 (sha256 {code_hash('acme_gone')})"
    assert json.loads((run / "summary.json").read_text())["plugins"] == {"model.norm": record}
    shutil.rmtree(tmp_path / "site")  # uninstalled
    sys.modules.pop("acme_gone", None)
    forget_plugins()
    result = cli("sample", run)
    assert result.exit_code == 2 and "unknown norm 'unitnorm'" in result.output
    assert f"(the run was trained with model.norm: {record}: install acme-norms==1.2, the version it trained " \
        "with)" in result.output


def test_check_show_and_list_take_a_local_file(cli, tmp_path, scratch_registries):
    (tmp_path / "mine.py").write_text(textwrap.dedent(LOCAL))
    assert cli("check", "norm", "localnorm", "--import", tmp_path / "mine.py").exit_code == 0
    assert "source:     " + str(tmp_path / "mine.py") in cli("show", "norm", "localnorm", "--import", tmp_path / "mine.py").output
    assert "localnorm" in cli("list", "norm", "--import", tmp_path / "mine.py").output
    missing = cli("check", "norm", "localnorm", "--import", tmp_path / "nothere.py")
    assert missing.exit_code == 2 and f"component file {tmp_path / 'nothere.py'} not found" in missing.output


def test_a_file_imported_by_a_script_and_by_a_recipe_registers_once(write_recipe, tmp_path, scratch_registries,
                                                                     monkeypatch):
    (tmp_path / "twice_norm.py").write_text(textwrap.dedent(LOCAL).replace('"localnorm"', '"twicenorm"'))
    monkeypatch.syspath_prepend(str(tmp_path))
    import twice_norm  # noqa: F401  (as a test file of the component would)

    assert load_recipe(write_recipe(model={"norm": "twicenorm"}, imports=["twice_norm.py"])).model.norm.name == "twicenorm"
    sys.modules.pop("twice_norm", None)


def test_an_edited_local_file_runs_again_and_its_components_replace_the_old(write_recipe, tmp_path, scratch_registries):
    """As a notebook user edits a recipe's imports file between two load_recipe calls in one process."""
    source = textwrap.dedent(LOCAL).replace('"localnorm"', '"editednorm"')
    recipe = write_recipe(model={"norm": "editednorm"}, imports=["edited.py"])
    for version in (1, 2):
        (tmp_path / "edited.py").write_text(source + f"\nVERSION = {version}\n")
        spec = load_recipe(recipe).model.norm
        module = sys.modules[spec.cls.__module__]
        assert module.VERSION == version and getattr(module, spec.cls.__name__) is spec.cls  # this run's class


def test_a_local_file_run_again_may_rename_its_class_or_be_gone(write_recipe, tmp_path, scratch_registries):
    source = textwrap.dedent(LOCAL).replace('"localnorm"', '"renamednorm"')
    recipe = write_recipe(model={"norm": "renamednorm"}, imports=["renamed.py"])
    (tmp_path / "renamed.py").write_text(source)
    first = load_recipe(recipe).model.norm.cls
    (tmp_path / "renamed.py").write_text(source.replace(f"class {first.__name__}(", "class Renamed("))
    assert load_recipe(recipe).model.norm.cls.__name__ == "Renamed"  # the edited file's class, not a clash
    (tmp_path / "renamed.py").unlink()
    assert load_recipe(recipe).model.norm.cls.__name__ == "Renamed"  # gone since it ran: still registered


def test_a_name_an_edited_local_file_no_longer_registers_is_gone(write_recipe, tmp_path, scratch_registries):
    """Running the edited file again is as if it had run first now: a component renamed in it is known
    only by its new name, as in a new process; a file that fails to run keeps what it registered."""
    source = textwrap.dedent(LOCAL).replace('"localnorm"', '"firstnorm"')
    (tmp_path / "names.py").write_text(source)
    load_recipe(write_recipe(model={"norm": "firstnorm"}, imports=["names.py"]))
    (tmp_path / "names.py").write_text(source.replace('"firstnorm"', '"secondnorm"'))
    load_recipe(write_recipe(model={"norm": "secondnorm"}, imports=["names.py"]))
    assert "secondnorm" in registry("norm").names() and "firstnorm" not in registry("norm").names()
    with pytest.raises(RecipeError, match=r"unknown norm 'firstnorm'"):
        load_recipe(write_recipe(model={"norm": "firstnorm"}, imports=["names.py"]))
    (tmp_path / "names.py").write_text(source.replace('"firstnorm"', '"thirdnorm"') + "\nraise RuntimeError('oops')\n")
    with pytest.raises(RecipeError, match="oops"):
        load_recipe(write_recipe(model={"norm": "secondnorm"}, imports=["names.py"]))
    assert "secondnorm" in registry("norm").names()  # a failed run takes nothing away


def test_weights_that_no_longer_fit_an_edited_local_component_name_it(write_recipe, tmp_path, scratch_registries):
    from gptkit import UserError, load_model, train
    from gptkit.training.checkpoint import PluginChangedWarning

    source = textwrap.dedent(LOCAL).replace('"localnorm"', '"gainnorm"').replace(
        "    def forward(self, x):", "    def __init__(self, config, params):\n        super().__init__(config, params)\n"
        "        self.gain = torch.nn.Parameter(torch.ones(config.n_embd))\n\n    def forward(self, x):")
    (tmp_path / "gain.py").write_text("import torch\n" + source)
    run = train(load_recipe(write_recipe(model={"norm": "gainnorm"}, imports=["gain.py"], train={"max_steps": 1})),
                runs_dir=tmp_path / "runs", quiet=True).run_dir
    (tmp_path / "gain.py").write_text((tmp_path / "gain.py").read_text().replace("self.gain", "self.scale"))
    with pytest.warns(PluginChangedWarning), pytest.raises(UserError, match=r"its weights do not fit the model its recipe describes \(.*\): "
                                                  r"model\.norm \(gainnorm\) was trained with .*gain\.py.*; the "
                                                  r"weights are that code's$"):
        load_model(run)


def test_a_local_file_recorded_before_records_held_its_hash_is_the_same_source(write_recipe, tmp_path,
                                                                               scratch_registries):
    from gptkit.training.resume import plugin_changes

    (tmp_path / "local_norm.py").write_text(textwrap.dedent(LOCAL))
    recipe = load_recipe(write_recipe(model={"norm": "localnorm"}, imports=["local_norm.py"]))
    assert plugin_changes({"model.norm": f"localnorm from {tmp_path / 'local_norm.py'}"}, recipe) == []


NOTEBOOK = """
import sys, warnings
import torch
from gptkit import load_model, train_model
from gptkit.components import Norm, register

@register("norm", "cellnorm")
class CellNorm(Norm):
    def forward(self, x):
        return x * SCALE

if sys.argv[1] == "train":
    train_model(sys.argv[2], save_path=sys.argv[3], runs_dir=sys.argv[4], quiet=True)
else:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_model(sys.argv[3])
    print([str(w.message) for w in caught])
"""


@pytest.mark.parametrize("scale", ["1.0", "2.0"], ids=["same-code", "edited"])
def test_a_component_defined_without_a_file_is_hashed_by_its_code(tmp_path, write_recipe, scale):
    """As a notebook cell's class is (python -c has no file either): editing it is noticed on load."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def python(code: str, *args) -> str:
        done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout

    recipe, model = write_recipe(model={"norm": "cellnorm"}, train={"max_steps": 2}), tmp_path / "m.pt"
    python(NOTEBOOK.replace("SCALE", "1.0"), "train", recipe, model, tmp_path / "runs")
    said = python(NOTEBOOK.replace("SCALE", scale), "load", recipe, model)
    changed = "model.norm (cellnorm) was trained with __main__, whose code has changed since (sha256 "
    assert (changed in said) == (scale != "1.0"), said
