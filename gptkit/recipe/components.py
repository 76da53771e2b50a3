"""A recipe field that picks a registered component by name, with that component's own parameters.

Written as `attention: naive` or `positional: {name: rope, base: 10000}`. Only the named component
is looked up, so validating a recipe never imports components it does not use.
"""

import inspect
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, ValidationError
from pydantic_core import to_jsonable_python

from ..components.base import Params
from ..errors import ComponentError, UserError, a, clipped_repr, listing, one_line, out_of_memory, rebuilt
from ..plugins import line_in
from ..registry import RegistryError, kinds, raised, registry

# The kinds a model is made of: built with the model's sizes first, `(config, params, ...)`; the
# others (optimizer, schedule, corpus) with `(params, ...)`.
MODEL_KINDS = ("attention", "feedforward", "norm", "positional")


class RecipeIssue(ValueError):
    """A validation failure that knows its location below the field it was raised for, and `causes`:
    the other keys there whose values make it a failure too (n_embd, for an n_head that does not divide
    it), so that an override of one of them is named as its cause."""

    def __init__(self, issues: list[tuple[tuple, str]], causes: tuple[tuple, ...] = ()):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" if loc else msg for loc, msg in issues))
        self.issues, self.causes = issues, causes

    __reduce__ = rebuilt


def undeclared_hint(e: BaseException) -> str:
    """A hint for a component that read a parameter its Params do not declare (`self.params.window`)."""
    params = getattr(e, "obj", None) if isinstance(e, AttributeError) else None
    if not isinstance(params, Params):
        return ""
    declared = type(params).__name__
    if not type(params).__module__.startswith("gptkit."):  # the component's own Params already
        return f"; a component reads only the parameters its Params declare: add a field `{e.name}` to {declared}"
    return (f"; a component reads only the parameters its Params declare: subclass {declared} with a "
            f"field `{e.name}` (and a default), and set `Params = ` that class on the component")


@dataclass(frozen=True)
class ComponentSpec:
    """A component picked in a recipe: its kind, registered name and validated parameters."""

    kind: str
    name: str
    params: Params

    @property
    def cls(self) -> type:
        return registry(self.kind).get(self.name)

    @property
    def built_in(self) -> bool:
        return registry(self.kind).entry(self.name).source == "built-in"

    def build(self, *args):
        """The component, given its arguments positionally in the order README documents for its kind,
        `params` second for a model's parts (`(config, params, pos)`) and first otherwise
        (`(params, total_steps)`), whatever a component names them."""
        cls = self.cls
        args = (args[0], self.params, *args[1:]) if self.kind in MODEL_KINDS else (self.params, *args)
        with self.blamed("building it", lambda: self._signature_hint(cls, args)):
            return cls(*args)

    def _signature_hint(self, cls: type, args: tuple) -> str:
        """'; a norm is built with (config, params)' when `cls` cannot take `args`, as its kind's base can."""
        try:
            inspect.signature(cls).bind(*args)
            return ""
        except TypeError:
            base = registry(self.kind).base
            names = list(inspect.signature(base.__init__).parameters)[1:]  # without self
            return f"; {a(self.kind)} is built with ({', '.join(names)})"
        except ValueError:  # no signature to read (a class written in C)
            return ""

    @contextmanager
    def blamed(self, doing: str, hint: Callable[[], str] = str) -> Iterator[None]:
        """Within it, an exception is this component's bug, raised again as one error naming it, followed
        by what `hint()` says of it. A UserError is already explained, and running out of memory is the
        machine's, not a bug."""
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            if out_of_memory(e):
                raise
            raise self.error(f"{doing} raised", e, hint()) from e

    def error(self, what: str, e: BaseException | None = None, hint: str = "") -> ComponentError:
        """The error "attention 'mine' from my_components.py is broken: WHAT", and after WHAT the type and
        first line of `e`, the line of the component's own file it was raised from, if any, and `hint`."""
        if e is not None:
            what = f"{what} {one_line(e)}{self.line_of(e)}{hint}{undeclared_hint(e)}"
        return registry(self.kind).broken(self.name, what, ComponentError)

    def line_of(self, e: BaseException) -> str:
        """' (at FILE:LINE)': the deepest line of the component's own file that `e` was raised through, if any."""
        try:
            file = inspect.getsourcefile(self.cls)
        except (TypeError, OSError):  # defined where no file is (an interactive session)
            return ""
        line = line_in(Path(file), e) if file else ""
        return f" (at {file}{line})" if line else ""

    def as_recipe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json", by_alias=True)}


def recipe_key(kind: str) -> str:
    """The recipe key that picks a component of `kind`, by the section whose fields name it: model.norm,
    train.optimizer, data.corpus."""
    from .schema import Recipe  # (it imports this module)

    section = next(s for s, f in Recipe.model_fields.items() if kind in getattr(f.annotation, "model_fields", {}))
    return f"{section}.{kind}"


def _fixed(spec: ComponentSpec, name: str, value) -> None:
    """A ComponentSpec's __setattr__: the dataclass's own says only "cannot assign to field 'name'"."""
    key = recipe_key(spec.kind)
    given = value if name == "name" and isinstance(value, str) else spec.as_recipe()
    raise TypeError(f"cannot set {name} of recipe.{key}: a recipe's component is fixed once validated; give it "
                    f"anew and the recipe checks it, e.g. recipe.{key} = {given!r}")


ComponentSpec.__setattr__ = _fixed  # after the class: a frozen dataclass may not define its own


class Unchecked(Params):
    """The parameters of a component that was not looked up, kept as the recipe wrote them."""

    model_config = ConfigDict(extra="allow")


_model_only = ContextVar("model_only", default=False)


def loading_model_only() -> bool:
    """Whether a recipe is being read within `model_only()`."""
    return _model_only.get()


@contextmanager
def model_only() -> Iterator[None]:
    """Within it, a recipe's training-only components (optimizer, schedule, corpus) are kept as written,
    not looked up: loading a trained model to sample from it needs only the model's components, not
    the plugins it was trained with. Building such a component still needs it installed."""
    token = _model_only.set(True)
    try:
        yield
    finally:
        _model_only.reset(token)


def parse_component(kind: str, value: Any) -> ComponentSpec:
    if isinstance(value, ComponentSpec):
        return value
    reg = registry(kind)
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict):
        params = dict(value)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise RecipeIssue([(("name",), f"say which {kind} to use with 'name: ...'; one of: {listing(reg.names())}")])
    elif isinstance(value, type):  # a notebook's `recipe.model.norm = MyNorm`: the name it is registered under
        name, params = _registered_name(kind, value), {}
    else:
        raise RecipeIssue([((), f"expected {a(kind)} name or a mapping with 'name', got {clipped_repr(value)}")])
    if _model_only.get() and kind not in MODEL_KINDS:
        return ComponentSpec(kind, name, Unchecked.model_validate(params))
    try:
        cls = reg.get(name)
    except UserError as e:  # unknown (the error lists what exists), or a component that cannot be loaded
        raise RecipeIssue([((), str(e))]) from None
    try:
        return ComponentSpec(kind, name, validate_params(cls.Params, params, kind, name))
    except ValidationError as e:
        from .errors import describe_errors  # deferred: errors.py formats with the schema

        raise RecipeIssue([(loc, msg + _taken_elsewhere(kind, name, loc) if str(msg).startswith("unknown key") else msg)
                           for loc, msg in describe_errors(e, cls.Params, {"name"})]) from None


def _taken_elsewhere(kind: str, name: str, loc: tuple) -> str:
    """For a parameter `name` has not (an unknown key at `loc`): which other components of `kind` take it (a
    --set of it without switching the component, say), and how to pick one with it."""
    if len(loc) != 1 or not isinstance(loc[0], str):
        return ""
    key, reg, takers = loc[0], registry(kind), []
    for other in reg.names():
        if other == name or reg.entry(other).error:
            continue
        try:
            params = reg.get(other).Params
        except Exception:  # a plugin that cannot be loaded: its own error, said where it is asked for
            continue
        if key in written_keys(params):
            takers.append(other)
    if not takers:
        return ""
    return (f"; {kind} {', '.join(map(repr, sorted(takers)))} {'takes' if len(takers) == 1 else 'take'} {key}: pick "
            f"{'it' if len(takers) == 1 else 'one'} with its parameters, e.g. {recipe_key(kind)}={{name: {takers[0]}, "
            f"{key}: ...}}")


def written_keys(model: type[BaseModel]) -> dict:
    """A model's fields by the key a recipe writes them with: their alias, if they have one."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _registered_name(kind: str, cls: type) -> str:
    names = registry(kind)._names_of(cls)
    if len(names) == 1:
        return names[0]
    if names:
        raise RecipeIssue([((), f"{cls.__name__} is registered as {' and as '.join(map(repr, names))}; give one name")])
    elsewhere = [f"{a(k)} ({n!r})" for k in kinds() if k != kind for n in registry(k)._names_of(cls)]
    if elsewhere:
        raise RecipeIssue([((), f"{cls.__name__} is {' and '.join(elsewhere)}, not {a(kind)}")])
    example = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", cls.__name__).lower()
    raise RecipeIssue([((), f"{cls.__name__} is not registered as {a(kind)}: register it with "
                            f"@register({kind!r}, {example!r}) above its class, then give that name")])


class BrokenParams(RegistryError, RecipeIssue):
    """A component's Params validator raised something other than ValueError: a bug in the component.
    A RegistryError, which names the component (as `gptkit check` reports it), and a RecipeIssue, which
    a recipe reports under the field that names the component."""

    def __init__(self, message: str):
        RecipeIssue.__init__(self, [((), message)])


def validate_params(P: type[Params], params: dict[str, Any], kind: str, name: str) -> Params:
    """`params` validated as JSON, which a recipe is: still strict, but an enum, tuple or path takes
    the string or list that YAML and a saved recipe hold it as. (The registry has checked that P's
    defaults survive the same round trip.) A validator that raises anything but ValueError or
    AssertionError (which pydantic reports as invalid values) is told as the bug of the component
    (`kind`, `name`), one BrokenParams naming it."""
    text = json.dumps(to_jsonable_python(params))
    try:
        return P.model_validate_json(text)
    except (ValueError, UserError):  # ValidationError; a UserError is explained already
        raise
    except Exception as e:
        if out_of_memory(e):
            raise
        raise registry(kind).broken(name, raised("its Params", e, "a bad value"), BrokenParams) from None


def component(kind: str, default: str | None):
    """The annotation of a recipe field holding one `kind` of component."""
    return Annotated[
        ComponentSpec | None if default is None else ComponentSpec,
        PlainValidator(partial(_parse_optional if default is None else parse_component, kind)),
        PlainSerializer(lambda spec: spec.as_recipe() if spec else None),
        Field(default=default, validate_default=True, description=f"a registered {kind}"),
    ]


def _parse_optional(kind: str, value: Any) -> ComponentSpec | None:
    return None if value is None else parse_component(kind, value)
