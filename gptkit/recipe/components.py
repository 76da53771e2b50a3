"""A recipe field that picks a registered component by name, with that component's own parameters.

Written as `attention: naive` or `positional: {name: rope, base: 10000}`. Only the named component
is looked up, so validating a recipe never imports components it does not use.
"""

import json
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

from pydantic import Field, PlainSerializer, PlainValidator, ValidationError
from pydantic_core import to_jsonable_python

from ..components.base import Params
from ..errors import UserError, listing
from ..registry import registry


class RecipeIssue(ValueError):
    """A validation failure that knows its location below the field it was raised for."""

    def __init__(self, issues: list[tuple[tuple, str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" if loc else msg for loc, msg in issues))
        self.issues = issues


@dataclass(frozen=True)
class ComponentSpec:
    """A component picked in a recipe: its kind, registered name and validated parameters."""

    kind: str
    name: str
    params: Params

    @property
    def cls(self) -> type:
        return registry(self.kind).get(self.name)

    def build(self, *args, **kwargs):
        return self.cls(*args, params=self.params, **kwargs)

    def as_recipe(self) -> dict[str, Any]:
        return {"name": self.name, **self.params.model_dump(mode="json", by_alias=True)}


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
    else:
        raise RecipeIssue([((), f"expected a {kind} name or a mapping with 'name', got {value!r}")])
    if name not in reg:
        raise RecipeIssue([((), reg.unknown(name))])
    try:
        cls = reg.get(name)
    except UserError as e:  # a component that exists but cannot be loaded
        raise RecipeIssue([((), str(e))]) from None
    try:
        return ComponentSpec(kind, name, validate_params(cls.Params, params))
    except ValidationError as e:
        from .errors import describe_errors  # deferred: errors.py formats with the schema

        raise RecipeIssue(describe_errors(e, cls.Params, {"name"})) from None


def validate_params(P: type[Params], params: dict[str, Any]) -> Params:
    """`params` validated as JSON, which a recipe is: still strict, but an enum, tuple or path takes
    the string or list that YAML and a saved recipe hold it as. (The registry has checked that P's
    defaults survive the same round trip.)"""
    return P.model_validate_json(json.dumps(to_jsonable_python(params)))


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
