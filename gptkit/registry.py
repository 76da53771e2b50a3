"""Named component registries, one per kind.

The surface is catalogue's: `register` (decorator or call), `get`, `names`, `find`; and `entry`, `find`
without raising (a broken plugin comes back with its error), for listings. Built-in and local-file
components register by calling `register`; installed packages declare entry points (see plugins.py),
which are imported one at a time, when their component is first used.

A name has exactly one source. Two registrations, a plugin naming a built-in, or two distributions
claiming one name are errors that name both sources, never a silent winner. A plugin that cannot be
loaded is recorded as broken with its distribution and the original error, and only that name fails.
"""

import contextlib
import difflib
import fnmatch
import inspect
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partialmethod
from types import FunctionType
from typing import Any

from pydantic import BaseModel, PydanticUserError

from . import plugins
from .errors import UserError, a, clipped_repr, did_you_mean, listing, one_line


class RegistryError(UserError):
    """A lookup or registration that cannot succeed."""


@dataclass(frozen=True)
class Entry:
    """One component and where it comes from; a broken one has `error` set and no `obj`."""

    kind: str
    name: str
    obj: Any = None
    source: str = "built-in"  # or "<distribution> <version>", or a local file
    error: str | None = None
    value: str | None = None  # an entry point's `module:object`
    sha256: str | None = None  # its code (a local file's, a plugin's package's) when loaded: a run records which it trained
    by: str | None = None  # the module that registered it (a local file may register a plugin's class)

    @property
    def origin(self) -> str:
        """Where it comes from, as a run records it: "acme-norms 1.2 (sha256 9f8e7d6c5b4a)", "/x/mine.py
        (sha256 1a2b3c4d5e6f)"."""
        return self.source + (f" (sha256 {self.sha256[:12]})" if self.sha256 else "")

    @property
    def where(self) -> str:
        try:
            file = inspect.getsourcefile(self.obj)
            line = inspect.getsourcelines(self.obj)[1]
        except (TypeError, OSError):
            return self.value or getattr(self.obj, "__module__", "?")
        return f"{file}:{line}"

    @property
    def doc(self) -> str:
        """The component's own docstring: not its base class's (inspect.getdoc's), which describes the kind."""
        if self.obj is None:  # not loaded: a broken plugin's
            return ""
        doc = vars(self.obj).get("__doc__") if inspect.isclass(self.obj) else getattr(self.obj, "__doc__", None)
        return inspect.cleandoc(doc) if isinstance(doc, str) else ""

    @property
    def summary(self) -> str:
        """The docstring's first paragraph, on one line."""
        return " ".join(self.doc.split("\n\n")[0].split())

    def __repr__(self) -> str:  # what `find` promises, not the fields (a sha256 of 64 digits)
        if self.error:
            return f"<{self.kind} {self.name!r} from {self.source}, broken: {self.error}>"
        return f"<{self.kind} {self.name!r} from {self.origin} at {self.where}{': ' + self.summary if self.summary else ''}>"


def _stale(obj: Any) -> bool:
    """Whether `obj` comes from an earlier run of a local file that has run again since (edited, with
    this class renamed): its module no longer holds it."""
    module = getattr(obj, "__module__", "") or ""
    if not module.startswith(plugins.LOCAL_PREFIX):
        return False
    if "<locals>" in obj.__qualname__:  # made inside a function: no module attribute holds it to compare
        return True
    held = sys.modules.get(module)
    for part in obj.__qualname__.split("."):  # a class nested in a class: A.Norm
        held = getattr(held, part, None)
    return held is not obj


def parse_record(text) -> tuple[str, str, str | None]:
    """(name, source, content hash or None) of a run's record of a component's origin, as `Entry.origin`
    and Recipe.plugin_sources write it: "unitnorm from acme-norms 1.2 (sha256 9f8e7d6c5b4a)", "mynorm from
    /x/mine.py (sha256 1a2b3c4d5e6f)", "unitnorm from acme-norms 1.2" (recorded before gptkit hashed a
    plugin's code); ("", "", None) for anything else (a damaged record)."""
    if not isinstance(text, str) or " from " not in text:
        return "", "", None
    name, _, origin = text.partition(" from ")
    source, _, digest = origin.partition(" (sha256 ")
    return name, source, digest.removesuffix(")") or None


def record_change(was: str, now: str) -> str | None:
    """How the origin of a component differs between a run's record of it, `was`, and `now` (both as
    `parse_record` reads them), as what follows "model.norm (unitnorm)" in a message: "was trained with
    acme-norms 1.2 and now comes from acme-norms 1.3", "was trained with acme-norms 1.2, whose code has
    changed since (sha256 ... -> ...)"; None if it is the same. The same for a plugin and a local file.
    Hashes are compared only when both records hold one: a run recorded before gptkit hashed a
    plugin's code is not told that its code changed."""
    _, source, digest = parse_record(was)
    _, now_source, now_digest = parse_record(now)
    if now_source != source:
        return f"was trained with {source} and now comes from {now_source}"
    if digest and now_digest and digest[:12] != now_digest[:12]:  # records hold 12 digits
        code = "code" if source.endswith(".py") or source == "__main__" else \
            "code (one hash of its package's files, or of its module's file)"
        return f"was trained with {source}, whose {code} has changed since (sha256 {digest[:12]} -> {now_digest[:12]})"
    return None


_listing = False  # see `clashes_listed`


@contextlib.contextmanager
def clashes_listed():
    """Within it (`gptkit list` and `show`, for as long as they run), a name registered twice raises
    nothing: the name reads as a broken entry naming both (as a plugin's clash with a built-in does), so
    that a file's every clash is listed and its other components still register. Outside it, the name
    is its first entry's still; registering it again there is an error."""
    global _listing
    _listing, before = True, _listing
    try:
        yield
    finally:
        _listing = before


def _target_problem(plugin: plugins.Plugin, e: BaseException) -> str | None:
    """What is wrong with `plugin`'s entry point itself (module:Class), which failed to load with `e`: a
    module or class renamed in the code and not in the metadata (installed before the rename), or a
    target written without its class; None if the target loaded, or its own import failed."""
    ep = plugin.entry_point
    if isinstance(e, ModuleNotFoundError) and e.name and (ep.module + ".").startswith(e.name + "."):
        parent, _, last = ep.module.rpartition(".")
        if not ep.attr and e.name == ep.module and inspect.isclass(getattr(sys.modules.get(parent), last, None)):
            return f"Its entry point names the module {ep.module}: a class is written module:Class ({parent}:{last})"
        return f"Its entry point names the module {ep.module}, which is not there"
    module = sys.modules.get(ep.module)
    # (an AttributeError of the module's own code, a lazy __getattr__'s say, is another: its own traceback line)
    if isinstance(e, AttributeError) and module is not None and ep.attr and getattr(e, "obj", None) is module \
            and e.name == ep.attr.split(".")[0]:
        classes = [n for n, v in vars(module).items() if inspect.isclass(v) and v.__module__ == module.__name__]
        return f"Its entry point names {ep.attr}, which {ep.module} does not define{did_you_mean(ep.attr, classes)}"
    if not ep.attr and inspect.ismodule(module):  # module.Class with a dot, or no class at all
        return f"Its entry point names the module {ep.module}, not a class in it: write it as module:Class"
    return None


def _interactive() -> bool:
    """Whether this is an interactive session (a notebook, IPython, python -i), where cells run again."""
    import builtins

    return hasattr(sys, "ps1") or bool(sys.flags.interactive) or getattr(builtins, "__IPYTHON__", False)


def _registering_module() -> str:
    """The module whose code calls `register`: the first frame outside gptkit's own (a plugin's module, a
    local file, a notebook's __main__); "gptkit" for a built-in."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "gptkit":
        frame = frame.f_back
    return frame.f_globals.get("__name__", "") if frame is not None else "gptkit"


def _name_of(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__name__


def _source_of(obj: Any) -> str:
    module = getattr(obj, "__module__", "") or ""
    if module == "gptkit" or module.startswith("gptkit."):
        return "built-in"
    try:
        return inspect.getsourcefile(obj) or module
    except (TypeError, OSError):  # defined where there is no file: an interactive session
        return module


@dataclass
class Registry:
    """The components of one kind, each a subclass of `base`."""

    kind: str
    base: type
    description: str = ""
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)  # registered in this process
    _loaded: dict[str, Entry] = field(default_factory=dict, repr=False)  # plugins imported, or broken
    _clashes: dict[str, Entry] = field(default_factory=dict, repr=False)  # see `clashes_listed`

    def register(self, name: str, obj: Any = None):
        """Register `obj` under `name`; as a decorator, with the name alone: `@attention.register("flash")`."""
        if not isinstance(name, str):  # `@registry("norm").register` without a name would register nothing
            raise TypeError(f"register takes the name first, e.g. @registry({self.kind!r}).register('my_{self.kind}'); "
                            f"got {getattr(name, '__name__', type(name).__name__)}")

        def add(obj: Any) -> Any:
            problem = name_problem(self.kind, name)
            if problem:
                raise RegistryError(problem)
            try:
                self._validate(obj)
            except RegistryError as e:
                raise RegistryError(f"{self.kind} '{name}': {e}") from None
            came_from = _source_of(obj)
            by = _registering_module()
            # A file's hash (a local file's, with the modules beside it that it imports), or for a class with
            # none (a notebook cell's), a hash of its code
            file_sha256 = plugins.local_code_sha256 if by.startswith(plugins.LOCAL_PREFIX) else plugins.python_file_sha256
            digest = file_sha256(came_from) or (plugins.class_code_sha256(obj) if came_from == "__main__"
                                                and isinstance(obj, type) else None)
            new = Entry(self.kind, name, obj, came_from, sha256=digest, by=by)
            # A class of `__main__` (a notebook cell, a script) or of a local file taking a name an installed
            # package declares is refused now, as one taking a built-in's: kept, it would fail at its first
            # use, and go on failing for the session, renamed or not. A package's registrations are left to
            # `entry`, which compares them with what its entry points load (a plugin registers what it declares).
            main = getattr(obj, "__module__", None) == "__main__"
            claims = [p for p in plugins.declared(self.kind).get(name, []) if not self._declares(p, obj)] \
                if main or by.startswith(plugins.LOCAL_PREFIX) else []
            if claims:
                error = (f"{self.kind} '{name}' is claimed by {' and by '.join(p.source for p in claims)} already; "
                         f"a name must have one source. {self._clash_fix(new, claims)}")
                if main or not _listing:
                    raise RegistryError(error)
                self._clashes[name] = Entry(self.kind, name, source=f"{new.source} and {claims[0].source}", error=error)
                return obj
            self._refuse_undeclared(name, obj, by)
            if name in self._entries:
                old = self._entries[name]
                same_class = old.obj.__qualname__ == obj.__qualname__
                module = getattr(obj, "__module__", None)
                renamed_in_session = module == "__main__" and _interactive()
                if getattr(old.obj, "__module__", None) == module and (same_class or renamed_in_session or _stale(old.obj)):
                    # Defined again (a notebook cell run again, perhaps with the class renamed; a module
                    # reloaded): the newest wins. In a script, two classes under one name are a mistake.
                    self._entries[name] = new
                    return obj
                if same_class and ":" in new.where and old.where.rpartition(":")[0] == new.where.rpartition(":")[0]:
                    # One file imported under two module names (a script's `import mine`, then a recipe's
                    # imports): the first class stays, unless the file was edited in between.
                    if new.sha256 != old.sha256:
                        self._entries[name] = new
                    return obj
                error = (f"{self.kind} '{name}' is registered twice: {_name_of(old.obj)} by {old.source} at "
                         f"{old.where} and {_name_of(obj)} by {new.source} at {new.where}. "
                         + (f"Rename the one in {new.source}." if old.source == "built-in" else "Rename one of them."))
                if not _listing:
                    raise RegistryError(error)
                self._clashes[name] = Entry(self.kind, name, source=f"{old.source} and {new.source}", error=error)
                return obj
            self._entries[name] = new
            return obj

        return add if obj is None else add(obj)

    def _refuse_undeclared(self, name: str, obj: Any, module: str) -> None:
        """A plugin package's module (`module`, registering `obj`) registers only names its distribution
        declares: one it does not is found only once something else imports the module, so a run trained
        with it could be neither resumed nor sampled in another process. A local file may register a
        plugin's class under a name of its own."""
        dist = plugins.package_of(module)
        if dist is None or any(p.dist == dist for p in plugins.declared(self.kind).get(name, [])):
            return
        raise RegistryError(
            f"{self.kind} '{name}' is registered by {module}, a module of the installed package {dist}, which "
            f"declares no entry point {name!r} in group gptkit.{self.kind}: gptkit finds a plugin's components by "
            f"their entry points, without importing it. Declare it in {dist}'s pyproject.toml, under "
            f"[project.entry-points.\"gptkit.{self.kind}\"]: {name} = \"{module}:{_name_of(obj)}\", and install "
            "the package again; or drop the register call")

    def get(self, name: str) -> Any:
        """The component registered as `name`; the error lists what exists, or why it is broken."""
        entry = self.entry(name)
        if entry.error:
            raise RegistryError(entry.error)
        return entry.obj

    def names(self, pattern: str = "*") -> list[str]:
        """Every name of this kind matching a shell-style wildcard, sorted; plugins' names come from
        their metadata, so nothing is imported."""
        return sorted(n for n in self._entries.keys() | plugins.declared(self.kind).keys()
                      if fnmatch.fnmatchcase(n, pattern))

    def find(self, name: str) -> Entry:
        """Where a component comes from: source, file and line, and its docstring's summary."""
        self.get(name)
        return self.entry(name)

    def entry(self, name: str) -> Entry:
        """The entry for `name`, importing its plugin on first use. Never raises for a name that
        exists: a broken plugin or a clash comes back with `error` set."""
        if not isinstance(name, str):
            raise TypeError(f"a component's name is a string ({self.kind}: {listing(self.names())}); got "
                            f"{type(name).__name__}")
        if _listing and name in self._clashes:
            return self._clashes[name]
        claims = plugins.declared(self.kind).get(name, [])
        local = self._entries.get(name)
        if local and any(self._declares(p, local.obj) for p in claims):
            if name in self._loaded and self._loaded[name].obj is not local.obj:  # its module was reloaded
                del self._loaded[name]
            local = None  # a plugin's module that registers what it declares: one source, not two
        elif local and name in self._loaded and self._loaded[name].error and any(
                getattr(local.obj, "__module__", None) == p.entry_point.module for p in claims):
            local = None  # registered by a plugin's import that then failed: the plugin's error, not a clash
        own = next((p for p in claims if local and plugins.package_of(local.by or "") == p.dist), None)
        if own:  # the plugin's own module registers another class than its entry point names
            cls = _name_of(local.obj)
            return Entry(self.kind, name, source=own.source, error=(
                f"{self.kind} '{name}' from {own.source}: its entry point names {own.value}, but its module {local.by} "
                f"registers {cls} under that name; a name has one class. Point the entry point at "
                f"{local.obj.__module__}:{cls} in {own.dist}'s pyproject.toml (and install it again), or drop that "
                "register call"))
        sources = ([local.source] if local else []) + [p.source for p in claims]
        if not sources:
            raise RegistryError(self._unknown(name))
        if len(sources) > 1:
            return Entry(self.kind, name, source=" and ".join(sources), error=(
                f"{self.kind} '{name}' is claimed by {' and by '.join(sources)}; a name must have one "
                f"source. {self._clash_fix(local, claims)}"))
        if local:
            return local
        if name not in self._loaded:
            self._loaded[name] = self._load(claims[0])
            if name in self._entries and not self._loaded[name].error:  # its import registered the name too:
                return self.entry(name)                                   # the object it names, or a clash
        return self._loaded[name]

    def _names_of(self, obj: Any) -> list[str]:
        """The names `obj` is registered under in this process (a plugin's, once loaded)."""
        return sorted({n for n, e in [*self._loaded.items(), *self._entries.items()] if e.obj is obj})

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in plugins.declared(self.kind)

    def _unknown(self, name: str) -> str:
        names = [n for n in self.names() if not (n in self._loaded and self._loaded[n].error)]  # broken: no choice
        # Given for the wrong kind (--set model.norm=gqa): said so, not a lookalike of this kind's
        other = [k for k in kinds() if k != self.kind and name in registry(k)]
        guess = "" if other else did_you_mean(name, names)
        # Declared under a misspelt group that means this kind (gptkit.norms for a norm), not another's
        misplaced = [text for k, n, _, text in misplaced_entry_points()
                     if n == name and difflib.get_close_matches(k, kinds(), n=1) == [self.kind]]
        if other:
            hint = f"; {clipped_repr(name)} is {' and '.join(map(a, other))}, not {a(self.kind)}"
        elif not plugins.enabled():  # the name meant may be a plugin's
            hint = f" ({plugins.turned_off()})"
        elif misplaced:  # installed, under a misspelt group
            hint = f"; {misplaced[0]}: fix the group in its pyproject.toml and install it again"
        else:  # nothing like it here: perhaps a plugin package's, not installed (recipes say which in comments)
            hint = "" if guess else "; a plugin package's components are available once it is installed (pip install it)"
        files = plugins.local_files()
        if files and not other:  # a local file meant to define it (--import, imports:) has no register call for it
            hint += (f"; the local file{'s' if len(files) > 1 else ''} run ({', '.join(files)}) register"
                     f"{'' if len(files) > 1 else 's'} no {self.kind} by that name: register its class with "
                     f"@register({self.kind!r}, {name!r})")
        return f"unknown {self.kind} {clipped_repr(name)}{guess}. Available: {listing(names)}{hint}"

    def _clash_fix(self, local: Entry | None, claims: list[plugins.Plugin]) -> str:
        """How to settle a name claimed twice, which depends on who claims it."""
        dists = " or ".join(p.dist for p in claims)
        if local is None:  # two distributions
            return ("Uninstall one of the packages, or rename the entry point in one of them "
                    "(GPTKIT_NO_PLUGINS=1 turns plugins off)")
        if local.source == "built-in":  # a built-in cannot be renamed or uninstalled: the plugin gives way
            return (f"Rename the entry point in {dists} (its group gptkit.{self.kind}), or uninstall {dists} "
                    "(GPTKIT_NO_PLUGINS=1 turns plugins off)")
        return (f"Rename the component in {local.source}, or rename the entry point in {dists}, or uninstall "
                f"{dists} (GPTKIT_NO_PLUGINS=1 turns plugins off)")

    def check(self, name: str, config: Any, params: Any) -> None:
        """Run the component's own `check(config, params)`. A ValueError is its refusal of `config` and
        passes through; anything else is a bug in the component, told as one error naming it."""
        cls = self.get(name)
        try:
            cls.check(config, params)
        except ValueError:
            raise
        except Exception as e:
            raise self.broken(name, raised("its check(config, params)", e, "a configuration it cannot work with")) \
                from None

    def broken(self, name: str, reason: str, error: type[UserError] = RegistryError) -> UserError:
        """The error "norm 'mine' from acme-norms 1.2 (acme:Mine) is broken: REASON", of class `error` (taking
        the message), for a bug in a component met after it loaded (see `raised`)."""
        entry = self.entry(name)
        where = f"{entry.source} ({entry.value})" if entry.value else entry.source
        return error(f"{self.kind} '{name}' from {where} is broken: {reason}")

    def forget_plugins(self) -> None:
        self._loaded.clear()

    @staticmethod
    def _declares(plugin: plugins.Plugin, obj: Any) -> bool:
        """Whether `plugin`'s entry point is `obj`; looked at only once its module is imported, so that
        reporting a clash imports nothing."""
        if plugin.entry_point.module not in sys.modules:
            return False
        try:
            return plugin.entry_point.load() is obj
        except (ImportError, AttributeError):  # a module still importing, or that lacks the object
            return False

    def _load(self, plugin: plugins.Plugin) -> Entry:
        entry = Entry(self.kind, plugin.name, source=plugin.source, value=plugin.value)
        problem = name_problem(self.kind, plugin.name)
        if problem:  # the rule `register` applies, said before anything is imported
            return replace(entry, error=(
                f"{self.kind} '{plugin.name}' from {plugin.source} ({plugin.value}) is broken: its entry point "
                f"{plugin.name!r} in group gptkit.{self.kind}: {problem}; rename that entry point in "
                f"{plugin.dist}'s metadata (GPTKIT_NO_PLUGINS=1 turns plugins off)"))
        try:
            obj = plugin.entry_point.load()
            self._validate(obj)
        except (Exception, SystemExit) as e:  # a plugin's import may raise anything, even exit; only this name pays
            error = str(e) if isinstance(e, RegistryError) else \
                plugins.load_failure(e) + plugins.raised_in_package(plugin.entry_point.module, e)
            target = _target_problem(plugin, e)
            fix = (f"{target}; correct it in {plugin.dist}'s pyproject.toml if it is wrong, and install it again"
                   if target else "Fix or uninstall that package")
            return replace(entry, error=(
                f"{self.kind} '{plugin.name}' from {plugin.source} ({plugin.value}) is broken: {error}. "
                f"{fix} (GPTKIT_NO_PLUGINS=1 turns plugins off)"))
        return replace(entry, obj=obj, sha256=plugins.code_sha256(obj))

    def _validate(self, obj: Any) -> None:
        from .components.base import Params  # deferred: components import this module

        if not (inspect.isclass(obj) and issubclass(obj, self.base)):
            other = next((k for k, r in _registries.items() if inspect.isclass(obj) and issubclass(obj, r.base)), None)
            hint = (f": it is {a(other)} component; register it as one (@register(\"{other}\", ...), or the entry "
                    f"point group gptkit.{other})") if other else ""
            raise RegistryError(f"must be a subclass of {self.base.__module__}.{self.base.__qualname__}, got {obj!r}"
                                f"{hint}")
        if not (inspect.isclass(obj.Params) and issubclass(obj.Params, Params)):
            raise RegistryError(f"its Params must be a subclass of gptkit.components.Params, got {obj.Params!r}")
        try:  # a model pydantic cannot describe cannot be listed or written to a recipe
            obj.Params.model_json_schema()
        except PydanticUserError as e:
            raise RegistryError(f"its Params: {plugins.load_failure(e)}") from None
        if any("name" in (n, f.alias) for n, f in obj.Params.model_fields.items()):
            raise RegistryError("its Params may not have a field called 'name': in a recipe, 'name' says "
                                "which component it is")
        lax = sorted({m.__name__ for m in _lax_models(obj.Params)})
        if lax:  # a typo in a key would be dropped without a word, "1e-3" taken for a number
            raise RegistryError(f"its Params use {', '.join(lax)}, which would ignore unknown keys or convert "
                                "values of the wrong type; derive nested models from gptkit.components.Params "
                                "too, and keep its model_config's extra='forbid' and strict=True (and no field's "
                                "strict=False)")
        required = [n for n, f in obj.Params.model_fields.items() if f.is_required()]
        if required:  # a recipe may name a component alone, and the conformance kit builds it so
            raise RegistryError(f"its Params must give every field a default; {', '.join(required)} has none")
        try:  # as a run's saved recipe holds them, and as resuming or sampling reads them back
            # warnings=False: a default of the wrong type (`hidden: int = "abc"`) makes pydantic's serializer
            # warn on stderr; validating it back below is what reports it, once, as gptkit's own error
            obj.Params.model_validate_json(obj.Params().model_dump_json(by_alias=True, warnings=False))
        except ValueError as e:  # pydantic's ValidationError, or a default_factory's own error
            problems = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']} (its default is {clipped_repr(d['input'])})"
                                 if d.get("loc") else d["msg"] for d in e.errors()) if hasattr(e, "errors") else str(e)
            raise RegistryError(f"its Params' defaults do not survive being written to a recipe and read "
                                f"back: {problems}") from None
        except Exception as e:  # a validator's bug, met on the defaults
            raise RegistryError(raised("its Params, given their defaults,", e, "a bad value")) from None
        # Caught here, not at the first training step: a kind's base class lists what a subclass has yet
        # to write with `unimplemented()` where @abstractmethod cannot say it (one of two methods, say).
        missing = obj.unimplemented() if hasattr(obj, "unimplemented") else abstract_methods(obj)
        if missing:
            raise RegistryError(f"does not implement {', '.join(missing)}")
        wrong = miscalled_methods(obj, self.base)
        if wrong:
            raise RegistryError("; ".join(wrong))


# An ASCII letter, then ASCII letters, digits, _ and -: a plain YAML string in a recipe (never a number
# such as 1e5 or 012), one `--set KEY=NAME` or `--vary KEY=A,B` value, and never taken for an option (-x).
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
NAME_RULE = "ASCII letters, digits, _ and -, starting with a letter"


def name_problem(kind: str, name: Any) -> str | None:
    """What is wrong with `name` as the name of a `kind` component, or None: the one rule for names
    registered and for installed packages' entry points (a recipe must be able to write it)."""
    if isinstance(name, str) and _NAME.fullmatch(name):
        return None
    return f"{kind} name {name!r} must be a word such as 'my_norm' ({NAME_RULE})"


def raised(what: str, e: BaseException, refused: str) -> str:
    """A component's code that raised something other than the ValueError gptkit reads as its refusal of
    what it was given, said in one line (the first of `e`'s message) for `Registry.broken`: "its
    check(config, params) raised TypeError: ...; refuse a configuration ... by raising ValueError"."""
    return f"{what} raised {one_line(e)}; refuse {refused} by raising ValueError"


def abstract_methods(cls: type) -> list[str]:
    """'name()' of each @abstractmethod `cls` leaves unwritten (nn.Module is no ABC: nothing else
    would refuse such a class before it is first called)."""
    return [f"{n}()" for n in dir(cls) if getattr(getattr(cls, n, None), "__isabstractmethod__", False)]


def miscalled_methods(cls: type, base: type) -> list[str]:
    """What is wrong with each method of gptkit's base classes that `cls` overrides so that it cannot
    be called as gptkit calls it: with every parameter of the base's method, positionally (forward:
    with its required ones; attention takes a cache only if its forward says so)."""
    problems = []
    ours = {n for c in base.__mro__ if c.__module__.startswith("gptkit.") for n, v in vars(c).items()
            if not n.startswith("_") and isinstance(v, FunctionType | classmethod)}
    for name in sorted(ours):
        if inspect.getattr_static(cls, name) is inspect.getattr_static(base, name):
            continue
        on_class = isinstance(inspect.getattr_static(base, name), classmethod)  # check(config, params): on the class
        want, got = _as_called(base, name, on_class), _as_called(cls, name, on_class)
        if want is None or got is None:  # not a callable gptkit can inspect (a builtin's): its call will say
            continue
        passed = [p.name for p in want.parameters.values() if name != "forward" or p.default is p.empty]
        try:
            got.bind(*passed)
        except TypeError:
            problems.append(f"its {name}{got} cannot be called as gptkit calls it: {name}({', '.join(passed)})")
    return problems


def _as_called(owner: type, name: str, on_class: bool) -> inspect.Signature | None:
    """The signature of `owner`'s attribute `name` as gptkit calls it, on an instance or (`on_class`) on
    the class: a method without self (with it, on the class), a staticmethod as it is, a classmethod
    without cls, a callable object's __call__; None for anything else (a property: never run here)."""
    raw = inspect.getattr_static(owner, name)
    try:
        if isinstance(raw, FunctionType | staticmethod | classmethod | partialmethod):
            return inspect.signature(raw.__get__(None if on_class else _AN_INSTANCE, owner))
        return inspect.signature(raw) if callable(raw) else None
    except (TypeError, ValueError):  # a builtin without a signature
        return None


_AN_INSTANCE = object()  # binds a method as an instance would, without building one


def _lax_models(annotation: Any, seen: set | None = None):
    """The pydantic models in a type annotation (itself included) that accept unknown keys or lax types."""
    seen = set() if seen is None else seen
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel) and annotation not in seen:
        seen.add(annotation)
        loose = any(getattr(m, "strict", None) is False for f in annotation.model_fields.values() for m in f.metadata)
        if annotation.model_config.get("extra") != "forbid" or annotation.model_config.get("strict") is not True or loose:
            yield annotation
        for f in annotation.model_fields.values():
            yield from _lax_models(f.annotation, seen)
    for arg in typing.get_args(annotation):
        yield from _lax_models(arg, seen)


_registries: dict[str, Registry] = {}


def new_registry(kind: str, base: type, description: str = "") -> Registry:
    if kind in _registries:
        raise RegistryError(f"a registry for kind '{kind}' already exists")
    _registries[kind] = Registry(kind, base, description)
    return _registries[kind]


def registry(kind: str) -> Registry:
    """The registry of one kind ('attention', 'norm', ...)."""
    from . import components  # noqa: F401  (registers the built-ins)

    if not isinstance(kind, str):
        raise TypeError(f"a component kind is a name, e.g. 'attention' (kinds(): {listing(_registries)}); got "
                        f"{type(kind).__name__}")
    try:
        return _registries[kind]
    except KeyError:
        raise RegistryError(
            f"unknown component kind '{kind}'{did_you_mean(kind, _registries)}. "
            f"Kinds: {listing(_registries)}"
        ) from None


@contextlib.contextmanager
def registering_again(module: str) -> Iterator[None]:
    """Within it, the module `module` runs again (an edited local file): when it has run, what it
    registered before and registers no more is dropped, as if it had run first now. If it raises, its
    earlier components are kept."""
    before = [(r, name, e) for r in _registries.values() for name, e in r._entries.items() if e.by == module]
    yield
    for r, name, e in before:
        if r._entries.get(name) is e:  # not registered again: a new run's entry would be another
            del r._entries[name]


def kinds() -> list[str]:
    from . import components  # noqa: F401

    return list(_registries)


def misplaced_entry_points() -> list[tuple[str, str, plugins.Plugin, str]]:
    """(group's kind, name, plugin, what is wrong) for each entry point in a `gptkit.*` group that is no
    kind: a plugin author's typo, which `gptkit list` warns of and an unknown name's error points out."""
    known = kinds()
    groups = ", ".join(f"gptkit.{kind}" for kind in sorted(known))
    return [(k, name, p, f"{p.source} declares '{name}' in entry point group 'gptkit.{k}', which is not a "
                         f"component kind{did_you_mean(k, known)}; the groups are: {groups}")
            for k in plugins.declared_kinds() if k not in known
            for name, claims in plugins.declared(k).items() for p in claims]


def forget_plugins() -> None:
    """Read installed packages' entry points afresh and drop every loaded plugin (for tests, or after
    installing a package in a running process)."""
    plugins.forget()
    for reg in _registries.values():
        reg.forget_plugins()
