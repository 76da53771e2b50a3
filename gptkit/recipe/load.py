"""Read a recipe file, apply `--set key=value` overrides, validate, and report every problem at once."""

import contextlib
import copy
import functools
import json
import os
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from .. import plugins
from ..components.base import constraints
from ..device import resolve_device
from ..errors import UserError, overridden, override, overrides_example, problems
from ..io import expand_home, home_path, quote, read_text
from ..registry import kinds, registry
from . import yaml
from .components import ComponentSpec, loading_model_only
from .errors import NotAString, causes, describe_errors, string_hint
from .schema import Recipe, RecipePath, _resolve


class RecipeError(UserError):
    pass


def load_recipe(path: str | Path, overrides: Sequence[str] = (), origins: Mapping[str, str] | None = None) -> Recipe:
    """The validated recipe in `path` with `overrides` ("train.lr=3e-4") applied. Errors name an override
    as `origins[text]` (say `--vary KEY=VALUE`, or an ablation file's key), by default as the caller gave
    it (`errors.override`: `--set TEXT` on the command line)."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"load_recipe takes a recipe file's path, got {type(path).__name__}; change a loaded Recipe "
                        "by assigning its fields, or with train_model(recipe, overrides=[...])")
    path = home_path(path, f"recipe file {path}")
    _refuse_run_file(path)
    try:
        data, lines, source = yaml.load_with_source(read_text(path, "recipe"), str(path), keep_going=True)
    except yaml.YAMLError as e:
        raise _not_a_recipe(path, _with_range(e)) from None
    if data is None and not overrides:  # (--set may give every key; an empty file is a start)
        raise _not_a_recipe(path, RecipeError(f"{path} is empty; a recipe needs at least name and data.path (see "
                                              "recipes/shakespeare-cpu.yaml)"))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _not_a_recipe(path, RecipeError(f"{path}: a recipe is a mapping with keys such as name, data, model, "
                                              f"train; got {type(data).__name__}"))
    _refuse_ablation_file(path, data)
    applied = apply_overrides(data, overrides, origins)
    return validate(data, origin=str(path), base_dir=path.parent, lines=lines, overrides=applied, source=source)


def _not_a_recipe(path: Path, e: UserError) -> UserError:
    """`e`, or for a file named otherwise than .yaml/.yml (a .txt: likely the text meant to train on), what a
    recipe is."""
    if path.suffix.lower() in ("", ".yaml", ".yml"):
        return e
    return RecipeError(f"{path} is not a recipe (a YAML file such as recipes/shakespeare-cpu.yaml); to train on "
                       f"this text, name it in a recipe's data.path, e.g. --set data.path={quote(path)}")


def _refuse_run_file(path: Path) -> None:
    """Another file of a run folder (its checkpoint.pt, summary.json) given for a recipe: what to give instead."""
    run = path.parent
    if path.name != "recipe.yaml" and (run / "recipe.yaml").is_file() and (run / "summary.json").is_file():
        raise RecipeError(f"{path} is a file of the run folder {run}, not a recipe; resume the run with gptkit run "
                          f"--resume {quote(run)}, sample it with gptkit sample {quote(run)}, or train its recipe anew "
                          f"with gptkit run {quote(run / 'recipe.yaml')}")


def _refuse_ablation_file(path: Path, data: dict) -> None:
    """An ablation file read as a recipe would fail on each of its keys (`mode`: did you mean 'model'?):
    one line instead. `gptkit ablate` takes a file with `recipe:` for an ablation, anything else for a
    recipe to vary, so a `vary:` without `recipe:` must not send the user back there unchanged."""
    if data.keys() & {"data", "model", "train"} or not data.keys() & {"recipe", "vary"}:
        return
    if "recipe" in data:
        raise RecipeError(f"{path} looks like an ablation file (it has `recipe:`), not a recipe; "
                          f"run it with: gptkit ablate {quote(path)}")
    raise RecipeError(f"{path} looks like an ablation file (it has `vary:`) but lacks `recipe:`, the base recipe "
                      f"to vary; add `recipe: PATH` and run it with: gptkit ablate {quote(path)}")


def apply_overrides(data: dict, overrides: Sequence[str] | None, origins: Mapping[str, str] | None = None
                    ) -> list[tuple[tuple, str]]:
    """apply_override for each of `overrides`, in order, except that a key goes before the keys below it
    (model.positional=rope, or model.positional.name=rope, before model.positional.base=500, whichever
    came first: else naming the component would start it from its defaults, silently dropping the
    parameter); what they return."""
    texts = check_overrides(overrides)
    depth_first = sorted(range(len(texts)), key=lambda i: _depth(texts[i]))  # stable
    done = {i: apply_override(data, texts[i], (origins or {}).get(texts[i])) for i in depth_first}
    applied = [done[i] for i in range(len(texts))]  # in the order given: problems are reported in it
    keys = [k for k, _ in applied]
    corpus_set = any(k[:2] == ("data", "corpus") for k in keys)  # data.corpus, or data.corpus.name
    if ("data", "path") in keys and not corpus_set and isinstance(data.get("data"), dict):
        # The corpus makes the recipe's own file. Another path is the user's text: a typo in its name
        # must be "not found", not the corpus written under that name.
        data["data"]["corpus"] = None
    return applied


def _depth(override: str | tuple) -> int:
    """How deep the key an override sets is (given as KEY=VALUE or as its key path); X.name=OTHER is
    X=OTHER (see apply_override): at X's depth."""
    keys = tuple(override.partition("=")[0].strip().split(".")) if isinstance(override, str) else override
    return len(keys) - (len(keys) > 1 and keys[-1] == "name")


def check_overrides(overrides: Sequence[str] | None) -> Sequence[str]:
    """`overrides` if it is a list (or tuple) of "key=value" strings; None is none."""
    if overrides is None:
        return ()
    if isinstance(overrides, str):  # a string is a sequence too, of one-letter "overrides"
        raise TypeError(f"overrides takes a list of 'key=value' strings, e.g. [{overrides!r}]")
    if isinstance(overrides, Mapping):
        raise TypeError("overrides takes a list of 'key=value' strings, not a dict: "
                        "[f'{key}={value}' for key, value in overrides.items()]")
    try:
        overrides = list(overrides)  # a tuple, a generator
    except TypeError:
        raise TypeError(f"overrides takes a list of 'key=value' strings, e.g. ['train.lr=3e-4']; got {overrides!r}") \
            from None
    wrong = next((o for o in overrides if not isinstance(o, str)), None)
    if wrong is not None:
        raise TypeError(f"overrides takes a list of 'key=value' strings, e.g. ['train.lr=3e-4']; one is {wrong!r}")
    return overrides


def recipe_device(recipe: Recipe, overrides: Sequence[str] | None = (),
                  origins: Mapping[str, str] | None = None) -> torch.device:
    """The device `recipe`'s train.device resolves to here. One that is not here is named as validation's
    errors name a key: by the last of the recipe's `overrides` to set it ('--set train.device=cuda:
    train.device', or as `origins` names it, as in load_recipe), else as the key itself."""
    key = "train.device"
    setter = override_of(key, overrides, origins)
    return resolve_device(recipe.train.device, f"{setter}: {key}" if setter else key)


def override_of(key: str, overrides: Sequence[str] | None, origins: Mapping[str, str] | None = None) -> str | None:
    """How errors name the override of `overrides` that set `key` (or a key above it), the one applied last
    (apply_overrides): '--set data.path=x.txt', or as `origins` names it (as in load_recipe); None if none did."""
    texts = [t for t in check_overrides(overrides) if (key + ".").startswith(t.partition("=")[0].strip() + ".")]
    if not texts:
        return None
    last = max(reversed(texts), key=_depth)  # (of the deepest, the first found: the last given)
    return (origins or {}).get(last) or override(last)


@contextlib.contextmanager
def named_by_overrides(overrides: Sequence[str] | None, origins: Mapping[str, str] | None = None,
                       path: str | Path | None = None) -> Iterator[None]:
    """Within it, a UserError naming keys ("data.path: file x.txt not found", "train.batch_size 9999 is
    larger than the 3 training windows ...; lower train.batch_size or data.stride") that `overrides` set
    is named by those overrides first, as validation's errors are: the checks of a recipe against its
    data, made after it is validated, where the key said first need not be the one overridden. Without
    overrides, one that opens with a key is named by its line in the recipe file at `path`, if the file
    gives it."""
    try:
        yield
    except UserError as e:
        top = "|".join(Recipe.model_fields)  # a dotted key, or a top-level one as a change lists it: "seed: 1 -> 5"
        keys = re.findall(rf"(?<![\w./\\:-])((?:{top})(?:\.[a-z_0-9]+)+|(?:{top})(?=: ))", str(e))
        setters = dict.fromkeys(filter(None, (override_of(key, overrides, origins) for key in keys)))
        if setters:
            e.args = (f"{' and '.join(setters)}: {e}", *e.args[1:])
        elif path is not None and not overrides and keys and str(e).startswith(keys[0]):
            # (not a key named in passing; nor with overrides: one of a key the message names not, such as
            # data.path for a batch larger than the text, may be what made the file's value wrong)
            where = _line_of(path, keys[0])
            if where:
                e.args = (f"{where}: {e}", *e.args[1:])
        raise


def _line_of(path: str | Path, key: str) -> str | None:
    """"FILE:LINE", the line of the recipe file at `path` that gives `key` ("sample.prompt"); None if it
    does not (or no longer reads)."""
    try:
        path = home_path(path, "")
        line = yaml.load_with_source(read_text(path, "recipe"), str(path), keep_going=True)[1].get(tuple(key.split(".")))
    except (UserError, OSError):
        return None
    return f"{path}:{line}" if line else None


def validate(data: dict, origin: str = "recipe", base_dir: Path | None = None,
             lines: dict | None = None, overrides: Sequence[tuple[tuple, str]] = (),
             source: yaml.Source | None = None) -> Recipe:
    """The Recipe `data` describes, or one RecipeError listing every problem; `source` (of the file's
    text) lets a string field given a number or a mapping say how to quote it as it was written."""
    found = source.duplicates if source is not None else []
    duplicates = [error for _, error, _ in found]
    if any(path == ("imports",) for _, _, path in found):
        raise RecipeError(problems(origin, duplicates))  # before any file runs: which list is meant?
    unrun = _import_files(data, origin, base_dir, lines or {}, overrides)
    try:
        recipe = Recipe.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as e:
        said = _problems(e, origin, lines, overrides, source, lambda loc: _takes_empty(data, loc, base_dir))
        if unrun:  # the likely cause of an unknown component
            raise RecipeError(f"{said}\n(its imports could not be run: {'; '.join(unrun)})") from None
        raise RecipeError(said) from None
    if duplicates:  # said with the other mistakes, when there are any
        raise RecipeError(problems(origin, duplicates))
    return recipe


def _takes_empty(data: dict, loc: tuple, base_dir: Path | None) -> bool:
    """Whether an empty text at `loc` would be valid where `data` has something else (an empty sample.prompt
    is; an empty name is not): whether to suggest one."""
    trial = copy.deepcopy(data)
    try:
        functools.reduce(lambda node, key: node[key], loc[:-1], trial)[loc[-1]] = ""
        Recipe.model_validate(trial, context={"base_dir": base_dir})
    except ValidationError as e:
        return all(tuple(at) != loc for at, _ in describe_errors(e, Recipe))
    except (LookupError, TypeError):
        return False
    return True


def _problems(e: ValidationError, origin: str, lines: dict | None, overrides: Sequence[tuple[tuple, str]],
              source: yaml.Source | None = None, takes_empty: Callable[[tuple], bool] = lambda loc: False) -> str:
    """Every validation error, on a line of its own, named by its file line or by its override."""
    found = []  # (the override's index, the line, the text): the recipe's own in file order, then --set's
    also = causes(e)
    for loc, msg in describe_errors(e, Recipe):
        blamed, line, where = _blame(loc, also.get(loc, []), origin, lines or {}, overrides)
        if isinstance(msg, NotAString):
            empty_ok = msg.value is None and takes_empty(loc)  # (a value left out reads as null)
            hint = _string_hint(msg.value, loc, overrides[blamed] if blamed >= 0 else None, source, empty_ok)
            msg = f"{msg} {hint}"
        found.append((blamed, line, f"{where}: {'.'.join(map(str, loc))}: {msg}"))
    found += [(-1, line, error) for line, error, _ in (source.duplicates if source is not None else [])]
    return problems(origin, [text for *_, text in sorted(found, key=lambda p: p[:2])])


def _blame(loc: tuple, causes: list[tuple], origin: str, lines: dict, overrides: Sequence[tuple[tuple, str]]
           ) -> tuple[int, int, str]:
    """Who is to blame for an error at `loc` that the values at `causes` make one too, as (the override's
    index, or -1 for the file; its line, or 0; how errors name it). An override is to blame for errors at
    or below its key, above it (train.lr.x=5), or at a cause (--set model.n_embd=1 for n_head); of
    several, the one applied last, whose value won: the deepest key (apply_overrides), then the last
    given. Else the file is, at the nearest line it has."""
    for ats in ([loc], causes):  # an override of the key itself first: a cause only if none is
        blamed = [i for i, (keys, _) in enumerate(overrides)
                  if any(at[: len(keys)] == keys or (at and keys[: len(at)] == at) for at in ats)]
        if blamed:
            i = max(blamed, key=lambda i: (_depth(overrides[i][0]), i))
            return i, 0, overrides[i][1]
    line = next((lines[loc[:n]] for n in range(len(loc), -1, -1) if loc[:n] in lines), 0)
    return -1, line, f"{origin}{f':{line}' if line else ''}"


def _string_hint(value, loc: tuple, override: tuple[tuple, str] | None, source: yaml.Source | None,
                 empty_ok: bool) -> str:
    """string_hint for the string field at `loc` given `value`, by the `override` (key path, label) to
    blame, or else by the recipe file whose `source` tells how the value was written; `empty_ok`: whether
    an empty text would do there."""
    def in_file(written: str) -> str:  # `prompt: "MENENIUS:"`, or `- "x"` in a list
        return f"{loc[-1]}: {yaml.quote(written)}" if loc and isinstance(loc[-1], str) else f"- {yaml.quote(written)}"

    if override is None:
        return string_hint(value, source.text(loc) if source else None, in_file, empty_ok)
    keys, label = override
    given = _given(label, ".".join(keys))
    if given is None or loc[: len(keys)] != keys:  # an ablation file's key, say
        return string_hint(value, None, None)
    text, quoted = given
    written = text.partition("=")[2].strip()
    if loc == keys:  # --set 'sample.prompt="ROMEO:"'; --vary 'sample.prompt="ROMEO:",...', as it splits its values
        return string_hint(value, written, quoted, empty_ok)
    try:  # below the override's key: --set 'model.attention={name: mine, mode: 1}'
        below = yaml.load_with_source(written, label)[2].text(loc[len(keys):])
    except UserError:
        below = None
    return string_hint(value, below, in_file, empty_ok)


def _given(label: str, key: str) -> tuple[str, yaml.Quoted] | None:
    """The override that `label` names, KEY=VALUE as given, and how its giver would give `key` the string
    TEXT: `--set 'KEY="TEXT"'` (or --vary's) on the command line, `overrides=['KEY="TEXT"']` from Python.
    None for another label (an ablation file's key, an argument such as data_path=): gptkit wrote that
    value, quoted."""
    flag, _, text = label.partition(" ")
    if flag in ("--set", "--vary"):
        return text, yaml.flag_quoted(flag, key)
    text = overridden(label)
    return None if text is None else (text, lambda w: overrides_example(f"{key}={yaml.quote(w)}"))


_FILES = TypeAdapter(list[RecipePath])


def _import_files(data: dict, origin: str, base_dir: Path | None, lines: dict,
                  overrides: Sequence[tuple[tuple, str]]) -> list[str]:
    """Run the files under `imports` before anything else is validated: the components they register
    are names the rest of the recipe may use. Every file that fails is named, in one error; loading a
    model only, they are passed by (returned, as their errors) rather than refused."""
    try:
        listed = data.get("imports") if isinstance(data, dict) else None
        files = _FILES.validate_python(listed or [], context={"base_dir": base_dir})
    except ValidationError:
        return []  # a malformed list is reported below, with every other problem
    unrun, failed = [], []
    for i, path in enumerate(files):
        if path in files[:i]:  # listed twice: run, and its error said, once
            continue
        try:
            plugins.import_file(path)
        except UserError as e:
            unrun.append(str(e))  # loading a model: it may have held training components only, which it does not need
            failed.append(f"{_blame(('imports', i), [], origin, lines, overrides)[2]}: imports: {e}")
    if failed and not loading_model_only():
        raise RecipeError(problems(origin, failed))
    return unrun


def apply_override(data: dict, text: str, label: str | None = None) -> tuple[tuple, str]:
    """Set `key.path=value` in `data`; the value is read as YAML. Returns (key path, `label`), the label
    naming the override in errors (default: as the caller gave it, `errors.override`)."""
    label = label or override(text)
    key, sep, raw = text.partition("=")
    parts = tuple(p.strip() for p in key.split("."))  # `model = {...}` is model's, as YAML would read it
    if not sep or not all(parts):
        raise RecipeError(f"{label}: expected KEY=VALUE with a dotted key, e.g. {overrides_example('train.lr=3e-4')}")
    if not is_text(key):  # a byte that is not UTF-8, which Python passes on as a lone surrogate
        raise RecipeError(f"{label}: the key {key.strip()!r} holds a byte that is not UTF-8 text; retype it")
    given = _given(label, key.strip())
    try:
        value, _ = yaml.load(raw, label, given[1] if given else yaml.quote)  # one value: no line to name
    except yaml.YAMLError as e:
        raise _with_range(e, parts) from None
    schema = getattr(_field(parts) if len(parts) == 1 else None, "annotation", None)
    if isinstance(schema, type) and issubclass(schema, BaseModel) and not isinstance(value, dict):
        keys = list(schema.model_fields)  # (model=rope: a component's name, for its key, most likely)
        kind = next((k for k in keys if k in kinds() and isinstance(value, str) and value in registry(k)), None)
        fix = f"{parts[0]}.{kind}={raw.strip()}"
        example = "" if not kind else f", e.g. --vary {fix}" if label.startswith("--vary") else \
            f", e.g. {overrides_example(fix)}"
        raise RecipeError(f"{label}: {parts[0]} is a section of keys ({', '.join(keys)}), not one value; set one of "
                          f"them{example}")
    if len(parts) == 1 and isinstance(data.get(parts[0]), dict) and isinstance(value, dict):
        # A whole section would silently drop its other keys ({} too: every key back to its default)
        section = parts[0]
        first = next(iter(value), None) or next(iter(getattr(schema, "model_fields", None) or ["KEY"]))
        example = overrides_example(f"{section}.{first}={json.dumps(value[first]) if first in value else 'VALUE'}")
        if not label.startswith(("--", "overrides ")):  # an ablation file's set: or vary:, which write keys so
            example = f"{section}.{first} as the key"
        raise RecipeError(f"{label}: replaces the whole {section} section, dropping the recipe's other {section} "
                          f"keys; set keys one by one, e.g. {example}")
    value = absolute_paths(parts, value)  # paths on the command line are relative to the cwd
    node = data
    for i, part in enumerate(parts[:-1]):
        at = ".".join(parts[: i + 1])
        if not _holds_keys(parts[: i + 1]):  # data.path.x=1: said as given, not as a made-up {name: ...} of data.path
            raise RecipeError(f"{label}: {at} takes a value, with no keys below it ({parts[i + 1]}); set {at} "
                              f"itself, e.g. {overrides_example(f'{at}=VALUE')}")
        child = node.get(part)
        if child is None:  # a component left at its default keeps it: model.attention.bias=true
            default = getattr(_field(parts[: i + 1]), "default", None)
            child = node[part] = {"name": default} if isinstance(default, str) else {}
        elif isinstance(child, str) and _is_component(parts[: i + 1]):  # a component given by name gains parameters
            child = node[part] = {"name": child}
        elif not isinstance(child, dict):
            raise RecipeError(f"{label}: {at} is {child!r}, not a section with keys")
        node = child
    old = node.get(parts[-1])
    if isinstance(value, str) and isinstance(old, dict) and old.get("name") == value:
        return parts, label  # the component it is already: its parameters stay, as the baseline's do in an ablation
    if parts[-1] == "name" and value != old and _is_component(parts[:-1]):
        node.clear()  # another component, from its own defaults: X.name=OTHER is X=OTHER
    node[parts[-1]] = value
    return parts, label


def is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _field(parts: tuple) -> FieldInfo | None:
    """The schema's field at a dotted key, if the recipe's sections have one there."""
    model: Any = Recipe
    field = None
    for part in parts:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return field


def _holds_keys(parts: tuple) -> bool:
    """Whether the recipe field at `parts` may have keys below it: a section, a component, or a key the
    schema does not know (a component's parameter, a typo), which validation then judges."""
    field = _field(parts)
    return field is None or _is_component(parts) or (isinstance(field.annotation, type)
                                                       and issubclass(field.annotation, BaseModel))


def names_component(key: str) -> str | None:
    """The component key a dotted `key` sets the name of ("train.optimizer" for "train.optimizer.name"), or None."""
    parent, _, last = key.rpartition(".")
    return parent if last == "name" and _is_component(tuple(parent.split("."))) else None


def _is_component(parts: tuple) -> bool:
    """Whether the recipe field at `parts` (("train", "optimizer")) picks a component."""
    field = _field(parts)
    return field is not None and ComponentSpec in (field.annotation, *typing.get_args(field.annotation))


def absolute_paths(parts: tuple, value, base: Path | None = None):
    """`value` for the field at `parts` with a relative path (or each of a list of paths, as `imports`)
    made absolute from `base`, by default the current directory; any other value as it is."""
    if not is_path(parts) or isinstance(value, str) and typing.get_origin(_field(parts).annotation) is list:
        return value  # (a list's field given one string: refused as given, not as a path made absolute)

    def absolute(v):
        try:
            return os.path.abspath((base or Path()) / expand_home(v)) if isinstance(v, str) and v.strip() else v
        except ValueError:  # a ~ with no home to expand to: validation refuses it, naming the field and the override
            return v

    return [absolute(v) for v in value] if isinstance(value, list) else absolute(value)


def is_path(parts: tuple) -> bool:
    """Whether the recipe field at `parts` (("data", "path")) holds a path, or a list of paths."""
    field = _field(parts)
    return field is not None and any(getattr(m, "func", None) is _resolve for m in _metadata(field))


def _metadata(field: FieldInfo) -> list:
    """The field's metadata, with what its type keeps inside: list[RecipePath]'s marker, PositiveInt | None's > 0."""
    inside = [m for arg in typing.get_args(field.annotation) if typing.get_origin(arg) is Annotated
              for m in typing.get_args(arg)[1:]]
    return list(field.metadata) + [n for m in inside for n in (m.metadata if isinstance(m, FieldInfo) else [m])]


def _with_range(e: yaml.YAMLError, keys: tuple = ()) -> UserError:
    """`e`, and for an integer too long to read at `keys` + its key path, the range the schema allows there
    if it has an upper bound (max_steps has none: "too long to read" is all there is to say)."""
    field = _field(keys + e.key) if isinstance(e, yaml.IntegerTooLong) else None
    bounds = sorted((c for c in constraints(_metadata(field) if field else []) if c[0] in "<>"),
                    key=lambda bound: bound.startswith("<"))  # the lower bound first
    if not bounds or not bounds[-1].startswith("<"):
        return e
    return RecipeError(f"{e}; {'.'.join(map(str, keys + e.key))} must be {' and '.join(bounds)}")


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    """{"model": {"norm": {"name": "rmsnorm"}}} -> {"model.norm.name": "rmsnorm"}: for recipe diffs."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
