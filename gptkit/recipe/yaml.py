"""A YAML reader with YAML 1.1's traps closed, that remembers the line of every key.

PyYAML resolves YAML 1.1: `1e-3` is a string, `yes`/`no`/`on`/`off` are booleans, `012` is octal,
and a duplicate key silently keeps the last value. Here scalars follow the YAML 1.2 core schema
(`1e-3` is a float, only `true`/`false` are booleans), duplicate keys are errors, and only plain
data is built: tags that would construct objects are refused.
"""

import re

import yaml

from ..errors import UserError

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_PLAIN_TAGS = {_BOOL, _INT, _FLOAT} | {f"tag:yaml.org,2002:{t}" for t in ("str", "null", "map", "seq")}


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Loader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node)))

Path = tuple[str | int, ...]  # a key path such as ("model", "attention", "name")


class YAMLError(UserError):
    pass


def load(text: str, origin: str) -> tuple[object, dict[Path, int]]:
    """Parse one YAML document into plain data, and the 1-based line of every key path.

    `origin` names the text in errors (a file name, or `--set key`)."""
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        lines: dict[Path, int] = {}
        data = _build(loader, node, (), lines, origin) if node is not None else None
    except yaml.MarkedYAMLError as e:
        raise YAMLError(_describe(e, origin)) from None
    except yaml.YAMLError as e:
        raise YAMLError(f"{origin}: not valid YAML: {e}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines


def _build(loader, node, path: Path, lines: dict, origin: str):
    lines.setdefault(path, node.start_mark.line + 1)
    if node.tag not in _PLAIN_TAGS:
        raise YAMLError(
            f"{origin}:{node.start_mark.line + 1}: YAML tag '{node.tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed; "
            "a recipe holds plain data only (no tags that build objects)"
        )
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolve `<<` merge keys
        out = {}
        for key_node, value_node in node.value:
            key = _build(loader, key_node, path, {}, origin)
            if not isinstance(key, (str, int)):
                raise YAMLError(f"{origin}:{key_node.start_mark.line + 1}: a key must be a name, got {key!r}")
            if key in out:
                where = ".".join(map(str, path + (key,)))
                raise YAMLError(
                    f"{origin}:{key_node.start_mark.line + 1}: duplicate key '{where}' (first at line "
                    f"{lines[path + (key,)]}); YAML would silently keep only the last one. Remove one."
                )
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _build(loader, value_node, path + (key,), lines, origin)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(loader, item, path + (i,), lines, origin) for i, item in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _describe(e: yaml.MarkedYAMLError, origin: str) -> str:
    mark = e.problem_mark or e.context_mark
    where = f"{origin}:{mark.line + 1}" if mark else origin
    problem = e.problem or e.context or "not valid YAML"
    if "'\\t'" in problem:
        return f"{where}: a tab character is not allowed for indentation in YAML; indent with spaces"
    opened = e.context_mark
    if e.context and opened and mark and opened.line != mark.line:
        problem += f" ({e.context} at line {opened.line + 1})"
    return f"{where}: not valid YAML: {problem}"
