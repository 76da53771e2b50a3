"""Turn pydantic's validation errors into one line per problem: key path, what is wrong, a fix."""

import re
import types
import typing
from collections.abc import Callable

from pydantic import BaseModel, ValidationError

from ..errors import FIX_WIDTH, clipped, clipped_repr, did_you_mean, listing
from .components import RecipeIssue, written_keys

Loc = tuple
YAML_WORDS = {"True": "true", "False": "false", "None": "null"}  # Python's constants as a recipe writes them


def describe_errors(exc: ValidationError, model: type[BaseModel], extra_keys: set[str] = frozenset()) -> list[tuple[Loc, str]]:
    """(key path, message) for each error of `exc`, raised validating `model`."""
    issues = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, RecipeIssue):
            issues += [(loc + sub, msg) for sub, msg in cause.issues]
        elif err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            valid = set(written_keys(parent)) if parent else set()
            if parent is model:
                valid |= extra_keys
            key = str(loc[-1])
            issues.append((loc, f"unknown key{did_you_mean(key, valid)}. Valid keys here: {listing(valid)}"))
        elif err["type"] == "missing":
            issues.append((loc, "required key is missing"))
        elif err["type"] == "string_type":  # YAML read the value as another type: see string_hint
            issues.append((loc, NotAString(f"{err['msg']} {_got(err)}", err["input"])))
        elif err["type"] in ("model_type", "dict_type"):  # pydantic would name the section's class
            issues.append((loc, f"Input should be a section of keys {_got(err)}"))
        elif err["type"] == "literal_error":  # the choices as a recipe writes them: true, not Python's True
            msg = re.sub(r"'[^']*'|\b(True|False|None)\b", lambda m: YAML_WORDS.get(m[1], m[0]), err["msg"])  # quoted: as is
            issues.append((loc, f"{msg} {_got(err)}"))
        elif err["type"] in ("bool_type", "bool_parsing"):  # yes/no/on/off are strings in YAML 1.2, as here
            issues.append((loc, f"{err['msg']} {_got(err)}; write true or false"))
        elif err["type"] in ("float_type", "int_type") and _number_text(err["input"]):  # quoted, or PyYAML's 1e-3
            issues.append((loc, f"{err['msg']} {_got(err)}; {_number_text(err['input'])}"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            issues.append((loc, f"{msg} {_got(err)}"))
    return issues


def _number_text(value: object) -> str | None:
    """How to give a number that came as a string of one, else None. PyYAML (YAML 1.1) reads 1e-3, with no
    dot, as a string: a recipe dict made with yaml.safe_load holds one where gptkit's loader reads a float."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", text):
        dotted = re.sub(r"^([+-]?\d+)", r"\1.0", text)
        return (f"a string (quoted, or read by PyYAML's safe_load, which takes {text} for one): write {dotted}, "
                "unquoted, or load the file with gptkit's load_recipe")
    try:
        float(value)
    except ValueError:
        return None
    return "a string: write the number without quotes"


def _got(err: dict) -> str:
    return f"(got {clipped_repr(err['input'])})"  # a 1 MB value is not quoted whole


def causes(exc: ValidationError) -> dict[Loc, list[Loc]]:
    """For each error of `exc` that other keys cause too (see RecipeIssue), its key path: their key paths."""
    found = {}
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, RecipeIssue) and cause.causes:
            loc = tuple(err["loc"])
            found |= {loc + sub: [loc + key for key in cause.causes] for sub, _ in cause.issues}
    return found


class NotAString(str):
    """The message for a string field that YAML read as something else (`prompt: 2024`, `--set
    sample.prompt=ROMEO:`); `value` is what it read. Whoever knows how the value was written adds
    `string_hint`'s fix to it."""

    value: object

    def __new__(cls, message: str, value: object):
        self = super().__new__(cls, message)
        self.value = value
        return self


def _read_as(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    return ""  # not what YAML reads: a Python object given in a dict


def string_hint(value: object, written: str | None, quoted: Callable[[str], str] | None, empty_ok: bool = False) -> str:
    """Why a string field got `value`, and how to make it a string: `(YAML read ROMEO: as a mapping;
    quote it: --set 'sample.prompt="ROMEO:"')`. `written` is the value as the user wrote it (None if
    unknown); `quoted(text)` says how to write `text` quoted where the user wrote it (None: unknown);
    `empty_ok`: whether an empty text would do, for a value left out."""
    read_as = _read_as(value)
    if not read_as:
        return "(give a str)"
    what = "an empty value" if written == "" else clipped(written) if written is not None else "the value"
    fix = (f"quote it: {quoted(written)}" if written is not None and quoted and len(written) <= FIX_WIDTH
           else "quote it to make it a string")
    if written == "":  # nothing after the colon: most likely a value left out
        fix = f"write one, or {quoted(written)} for an empty text" if quoted and empty_ok else "write one"
    return f"(YAML read {what} as {read_as}; {fix})"


def _model_at(model: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    for part in loc:
        field = written_keys(model).get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = next((a for a in _flatten(field.annotation) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return None
    return model


def _flatten(annotation) -> list:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [a for arg in typing.get_args(annotation) for a in _flatten(arg)]
    return [annotation]
