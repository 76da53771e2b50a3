"""Named component registries, one per kind.

The surface is catalogue's: `register` (decorator or call), `get`, `names`, `find`. A name is
registered once per kind; a second registration is an error that names both places.
"""

import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError, did_you_mean, listing


class RegistryError(UserError):
    """A lookup or registration that cannot succeed."""


@dataclass(frozen=True)
class Entry:
    """One registered component and where it comes from."""

    kind: str
    name: str
    obj: Any
    source: str = "built-in"  # or "<distribution> <version>", or a local file

    @property
    def where(self) -> str:
        try:
            file = inspect.getsourcefile(self.obj)
            line = inspect.getsourcelines(self.obj)[1]
        except (TypeError, OSError):
            return getattr(self.obj, "__module__", "?")
        return f"{file}:{line}"

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.obj) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


@dataclass
class Registry:
    """The components of one kind, each a subclass of `base`."""

    kind: str
    base: type
    description: str = ""
    _entries: dict[str, Entry] = field(default_factory=dict, repr=False)

    def register(self, name: str, obj: Any = None, *, source: str = "built-in"):
        """Register `obj` under `name`; used bare as a decorator: `@attention.register("flash")`."""

        def add(obj: Any) -> Any:
            self._check(name, obj)
            if name in self._entries:
                old = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice: by {old.source} at {old.where} "
                    f"and by {source} at {Entry(self.kind, name, obj, source).where}. "
                    "Rename one of them."
                )
            self._entries[name] = Entry(self.kind, name, obj, source)
            return obj

        return add if obj is None else add(obj)

    def get(self, name: str) -> Any:
        """The component registered as `name`; the error lists what exists."""
        try:
            return self._entries[name].obj
        except KeyError:
            raise RegistryError(self.unknown(name)) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def find(self, name: str) -> Entry:
        """Where a component comes from: source, file and line, and its docstring's first line."""
        self.get(name)
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def unknown(self, name: str) -> str:
        return (
            f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}. "
            f"Available: {listing(self._entries)}"
        )

    def _check(self, name: str, obj: Any) -> None:
        if not isinstance(name, str) or not name.replace("-", "_").isidentifier():
            raise RegistryError(f"{self.kind} name {name!r} must be a word such as 'my_norm'")
        if not (inspect.isclass(obj) and issubclass(obj, self.base)):
            raise RegistryError(
                f"{self.kind} '{name}' must be a subclass of {self.base.__module__}."
                f"{self.base.__qualname__}, got {obj!r}"
            )


_registries: dict[str, Registry] = {}


def new_registry(kind: str, base: type, description: str = "") -> Registry:
    if kind in _registries:
        raise RegistryError(f"a registry for kind '{kind}' already exists")
    _registries[kind] = Registry(kind, base, description)
    return _registries[kind]


def registry(kind: str) -> Registry:
    """The registry of one kind ('attention', 'norm', ...)."""
    from . import components  # noqa: F401  (registers the built-ins)

    try:
        return _registries[kind]
    except KeyError:
        raise RegistryError(
            f"unknown component kind '{kind}'{did_you_mean(kind, _registries)}. "
            f"Kinds: {listing(_registries)}"
        ) from None


def kinds() -> list[str]:
    from . import components  # noqa: F401

    return list(_registries)
