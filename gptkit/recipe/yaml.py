"""A YAML reader with YAML 1.1's traps closed, that remembers the line of every key, and its writer.

PyYAML resolves YAML 1.1: `1e-3` is a string, `yes`/`no`/`on`/`off` are booleans, `012` is octal,
and a duplicate key silently keeps the last value. Here scalars follow the YAML 1.2 core schema
(`1e-3` is a float, only `true`/`false` are booleans), duplicate keys are errors, and only plain
data is built: tags that would construct objects are refused. `dump` writes what `load` reads back
as the same data (PyYAML's writer leaves the string "1e5" unquoted, which `load` reads as a float).
"""

import json
import re
import shlex
from collections.abc import Callable

import yaml

from ..errors import FIX_WIDTH, UserError, clipped, clipped_repr

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"  # YAML 1.1's `=`: a plain string in 1.2
_PLAIN_TAGS = {_BOOL, _INT, _FLOAT} | {f"tag:yaml.org,2002:{t}" for t in ("str", "null", "map", "seq")}


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP, _VALUE)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
_Loader.add_constructor(_INT, lambda loader, node: _int(loader.construct_scalar(node)))


def _int(text: str) -> int:
    """YAML 1.2's integers: decimal (012 is twelve, not octal), 0o octal and 0x hexadecimal."""
    base = {"0o": 8, "0x": 16}.get(text[:2], 10)
    return int(text[2:] if base != 10 else text, base)

Path = tuple[str | int, ...]  # a key path such as ("model", "attention", "name")


class YAMLError(UserError):
    pass


class IntegerTooLong(YAMLError):
    """An integer with more digits than Python reads (4,300 by default), far past any key's range. `key`
    is its key path in the text, for a reader that knows the range to add it."""

    def __init__(self, where: str, key: Path, digits: str):
        named = f"{'.'.join(map(str, key))}: " if key else ""  # a value given alone: `where` names its key
        super().__init__(f"{where}: {named}an integer of {len(digits.lstrip('+-')):,} digits is too long to read")
        self.key = key


MAX_VALUES = 100_000  # per document: aliases may not expand a small file into a huge one ("billion laughs")


Quoted = Callable[[str], str]  # how the giver of a value would give TEXT quoted: `--set 'KEY="TEXT"'`


def load(text: str, origin: str, quoted: Quoted | None = None) -> tuple[object, dict[Path, int]]:
    """Parse one YAML document into plain data, and the 1-based line of every key path.

    `origin` names the text in errors: a file name, or an override or a flag with its value (`--set
    KEY=VALUE`). `quoted` is given for such a value, which is given alone rather than in a file: errors
    then name no line (its one line is not worth naming), and say how to quote a value that must be."""
    data, lines, _ = load_with_source(text, origin, quoted)
    return data, lines


def load_with_source(text: str, origin: str, quoted: Quoted | None = None, keep_going: bool = False
                     ) -> tuple[object, dict[Path, int], "Source"]:
    """`load`, and the Source that tells how each value was written (for hints: `name: 2024` is a number).
    With `keep_going`, a duplicate key keeps its first value and is told in the Source's `duplicates`
    rather than raised, so that a recipe's other mistakes are said with it."""
    loader = None
    try:
        loader = _Loader(text)  # the reader already refuses control characters here
        node = loader.get_single_node()
        builder = _Builder(loader, origin, quoted is not None, keep_going)
        data = builder.build(node, ()) if node is not None else None
        if quoted is not None:  # one value on a command line, where a comment is never meant
            _refuse_comment(text, data, origin, quoted)
    except yaml.MarkedYAMLError as e:
        raise YAMLError(_describe(e, origin, text, quoted)) from None
    except yaml.reader.ReaderError as e:  # its message spans lines and names a code point, not the character
        what = "a byte that is not UTF-8 text" if 0xDC80 <= e.character <= 0xDCFF else f"the character {chr(e.character)!r}"
        where = _at(origin, text.count("\n", 0, e.position) + 1, quoted is not None)
        raise YAMLError(f"{where}: holds {what}, which YAML does not allow; retype it, or write it as an "
                        'escape in a double-quoted string ("\\t", "\\u00e9")') from None
    except yaml.YAMLError as e:
        raise YAMLError(f"{origin}: not valid YAML: {e}") from None
    except RecursionError:
        raise YAMLError(f"{origin}: values nested too deeply to read") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, builder.lines, Source(text, builder.spans, builder.duplicates)


def _refuse_comment(text: str, data, origin: str, quoted: Quoted) -> None:
    """A value given alone whose text holds a comment, ` #` in `--set 'prompt=the fox #2'`: YAML would cut
    it short without a word, and read another value than the one typed. `data`: what YAML read."""
    at = _comment_at(text)
    if at is None:
        return
    kept = text[:at].strip()
    what = f"the value would be {clipped_repr(kept)}" if kept else "nothing is left"
    keep = f"quote it to keep the '#': {quoted(text.strip())}" if len(text.strip()) <= FIX_WIDTH else \
        "quote it to keep the '#'"
    fix = f"{keep}, or leave the comment out" if isinstance(data, str) or data is None else "leave the comment out"
    raise YAMLError(f"{origin}: a '#' first or after a space starts a YAML comment, so {what}; {fix}")


def _comment_at(text: str) -> int | None:
    """Where a comment starts in one line of YAML: a '#' first or after white space, outside quotes (a
    quote opens a string only where a value starts: "it's" holds none)."""
    quote, escaped = None, False
    for i, c in enumerate(text):
        if escaped:  # the second quote of '' inside single quotes, or the character after \ inside double ones
            escaped = False
        elif quote:
            if c == "\\" and quote == '"' or c == quote == "'" and text[i + 1 : i + 2] == "'":
                escaped = True
            elif c == quote:
                quote = None
        elif c in "'\"" and (i == 0 or text[i - 1] in " \t[{,:-"):
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t"):
            return i
    return None


_ANCHOR = re.compile(r"^&\S+\s+")
_DIGITS = re.compile(r"[-+]?[0-9]+")


class Source:
    """How the values of a YAML text were written: `text(path)` is the value at a key path as it stands
    in the text (`2024`, `{a: 1}`, `"x"` with its quotes), or None if it spans several lines. Only
    positions are kept until a value's text is asked for (aliases may repeat a long value many times)."""

    def __init__(self, text: str, spans: dict[Path, tuple[int, int]], duplicates: list[tuple[int, str, Path]] = ()):
        self._text, self._spans = text, spans
        self.duplicates = list(duplicates)  # (line, error, key path) of each duplicate key passed by (keep_going)

    def text(self, path: Path) -> str | None:
        if path not in self._spans:
            return None
        start, end = self._spans[path]
        written = _ANCHOR.sub("", self._text[start:end].strip())  # `&name 2024` is the value 2024
        return None if _LINE_BREAKS.search(written) else written


class _Builder:
    """Plain data from composed nodes, with the line of every key path."""

    def __init__(self, loader: _Loader, origin: str, alone: bool, keep_going: bool = False):
        self.loader, self.origin, self.alone, self.keep_going = loader, origin, alone, keep_going
        self.duplicates: list[tuple[int, str, Path]] = []
        self.lines: dict[Path, int] = {}
        self.spans: dict[Path, tuple[int, int]] = {}  # where each value at a key path is written
        self.spanned: set[int] = set()  # the nodes given a span: an alias to one is written elsewhere
        self.values = 0
        self.open: set[int] = set()  # the nodes being built: an alias to one of them would never end

    def _at(self, line: int) -> str:
        return _at(self.origin, line, self.alone)

    def build(self, node, path: Path, lines: dict | None = None):
        line = node.start_mark.line + 1
        (self.lines if lines is None else lines).setdefault(path, line)
        if lines is None and id(node) not in self.spanned:  # not a key, nor a mapping merged in (whose values
            self.spanned.add(id(node))                       # are built again below it), nor an alias (`*name`)
            self.spans.setdefault(path, (node.start_mark.index, node.end_mark.index))
        self.values += 1
        if self.values > MAX_VALUES:
            raise YAMLError(f"{self.origin}: more than {MAX_VALUES:,} values (aliases expanding?); a recipe is smaller")
        if id(node) in self.open:
            raise YAMLError(f"{self._at(line)}: an alias refers to a value that contains it")
        if node.tag == _MERGE and isinstance(node, yaml.ScalarNode):  # `<<` as a value, not a merge key: a string
            return node.value
        if node.tag not in _PLAIN_TAGS:
            raise YAMLError(
                f"{self._at(line)}: YAML tag '{node.tag.replace('tag:yaml.org,2002:', '!!')}' is not allowed; "
                "a recipe holds plain data only (no tags that build objects)"
            )
        if isinstance(node, yaml.ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except (ValueError, KeyError):  # !!int abc, !!bool maybe, an integer of 5,000 digits
                if node.tag == _INT and _DIGITS.fullmatch(node.value):  # past Python's int-string-conversion limit
                    raise IntegerTooLong(self._at(line), path, node.value) from None
                tag = node.tag.replace("tag:yaml.org,2002:", "")
                raise YAMLError(f"{self._at(line)}: {clipped_repr(node.value)} is not a valid {tag}") from None
        self.open.add(id(node))
        try:
            return self._mapping(node, path, lines) if isinstance(node, yaml.MappingNode) else \
                [self.build(item, path + (i,), lines) for i, item in enumerate(node.value)]
        finally:
            self.open.discard(id(node))

    def _mapping(self, node, path: Path, lines: dict | None = None) -> dict:
        """With `lines` (a mapping merged in, built again where it is merged), the lines of its keys go there:
        they must not take the place of the lines of the keys of the mapping it is merged into."""
        merged, own, own_lines = {}, {}, {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE:  # `<<: *defaults`: built here, so every merged value is counted
                for k, v in self._merged(value_node, path, line).items():
                    merged.setdefault(k, v)
                    (self.lines if lines is None else lines).setdefault(path + (k,), line)
                continue
            key = self.build(key_node, path, {})
            if not isinstance(key, (str, int)):
                raise YAMLError(f"{self._at(line)}: a key must be a name, got {clipped_repr(key)}")
            if key in own:
                where = ".".join(map(str, path + (key,)))
                first = "" if self.alone else f" (first at line {own_lines[key]})"
                error = (f"{self._at(line)}: duplicate key '{where}'{first}; YAML would silently keep only the last "
                         "one. Remove one.")
                if not self.keep_going:
                    raise YAMLError(error)
                self.duplicates.append((line, error, path + (key,)))
                continue
            own_lines[key] = line
            if lines is None:
                self.lines[path + (key,)] = line
                self.spans.pop(path + (key,), None)  # a value merged in before is overridden by this one
            own[key] = self.build(value_node, path + (key,), lines)
        return {**merged, **own}  # a mapping's own keys override merged ones

    def _merged(self, node, path: Path, line: int) -> dict:
        """The entries a merge key brings: of one mapping, or of several, where earlier ones win."""
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        out = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise YAMLError(f"{self._at(line)}: '<<' merges mappings only")
            for k, v in self.build(source, path, {}).items():
                out.setdefault(k, v)
        return out


def _at(origin: str, line: int, alone: bool) -> str:
    """Where an error is: FILE:LINE, or a value given alone, which has no lines worth naming."""
    return origin if alone else f"{origin}:{line}"


def _describe(e: yaml.MarkedYAMLError, origin: str, text: str, quoted: Quoted | None) -> str:
    mark = e.problem_mark or e.context_mark
    where = _at(origin, mark.line + 1, quoted is not None) if mark else origin
    problem = e.problem or e.context or "not valid YAML"
    if "'\\t'" in problem and mark:
        return f"{where}: {_tab(text, mark.index)}"
    opened = e.context_mark
    if e.context and opened and mark and opened.line != mark.line:
        problem += f" ({e.context} at line {opened.line + 1})"
    if problem.startswith("mapping values are not allowed"):  # `prompt: MENENIUS:`, `--set sample.prompt=a: b: c`
        problem += f" ({_quote_hint(text, mark, quoted)})"
    elif problem == "expected ',' or '}', but got ':'" and mark:  # `sample: {prompt: ROMEO: hi}`
        problem += f" ({_flow_quote_hint(text, mark)})"
    return f"{where}: not valid YAML: {problem}"


def _tab(text: str, index: int) -> str:
    """What is wrong with the tab at `index`: PyYAML takes one nowhere it would separate tokens, be it
    as indentation, at the end of a line, or after a key, a value or a dash."""
    before = _LINE_BREAKS.split(text[:index])[-1].strip(" \t")
    after = _LINE_BREAKS.split(text[index + 1:], maxsplit=1)[0].strip(" \t")
    if not before:
        return "a tab character is not allowed for indentation in YAML; indent with spaces"
    before = clipped(before, len(before))  # the end of it, next to the tab
    if not after or after.startswith("#"):
        return f"a tab character after {before!r} is not allowed in YAML; remove it"
    return f"a tab character between {before!r} and {clipped_repr(after)} is not allowed in YAML; use a space"


COLON_HINT = "a value containing ': ' or ending in ':' must be quoted"
_KEY_VALUE = re.compile(r"""^\s*(?:-\s+)*([^\s#'"{\[\]}&*!|>%@`,-][^:#]*?)\s*:\s+(.+?)(?:\s+#.*)?$""")


def _quote_hint(text: str, mark: yaml.Mark | None, quoted: Quoted | None) -> str:
    """How to quote the value YAML read as a mapping where it may not be one: given alone, as its giver
    would (`quoted`); in a file, the line's `key: "value"`. A value too long to copy from an error
    gets the rule alone."""
    if quoted:
        return f"{COLON_HINT}: {quoted(text.strip())}" if len(text.strip()) <= FIX_WIDTH else COLON_HINT
    lines = text.splitlines()
    line = lines[mark.line] if mark and mark.line < len(lines) else ""
    match = _KEY_VALUE.match(line) if len(line) <= FIX_WIDTH else None
    if match and (": " in match[2] or match[2].endswith(":")):
        return f"{COLON_HINT}: {match[1]}: {quote(match[2])}"
    return f'{COLON_HINT}, e.g. prompt: "MENENIUS: good day"'


def _flow_quote_hint(text: str, mark: yaml.Mark) -> str:
    """_quote_hint inside braces: the entry of the mark's line around it (between a `{` or `,` and the
    next `,` or `}`), its value quoted."""
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    start = max(line.rfind("{", 0, mark.column), line.rfind(",", 0, mark.column)) + 1
    end = min((i for i in (line.find(",", mark.column), line.find("}", mark.column)) if i >= 0), default=len(line))
    key, colon, value = line[start:end].strip().partition(": ")
    if not (key and colon and value) or len(value) > FIX_WIDTH:
        return COLON_HINT
    return f"{COLON_HINT}: {key}: {quote(value.strip())}"


def quote(text: str) -> str:
    """`text` as a double-quoted YAML string, which reads back as exactly `text`."""
    return json.dumps(text, ensure_ascii=False)


def flag_quoted(flag: str, key: str) -> Quoted:
    """How `flag KEY=VALUE` gives a value TEXT quoted, for a shell: `--set 'KEY="TEXT"'`, which reads back
    as the string TEXT (--vary's with more values after it: `--vary 'KEY="TEXT",...'`)."""
    return lambda text: f"{flag} {shlex.quote(f'{key}={quote(text)}' + (',...' if flag == '--vary' else ''))}"


class _Dumper(yaml.SafeDumper):
    pass


# PyYAML's writer quotes a string when its resolvers would read it back as another type. Giving it
# this reader's resolvers as well as YAML 1.1's quotes what either would misread: "1e5" for this
# reader, "yes" or "2026-11-29" for PyYAML's (so the files read the same with plain PyYAML too).
_Dumper.yaml_implicit_resolvers = {
    first: _Loader.yaml_implicit_resolvers.get(first, []) + yaml.SafeDumper.yaml_implicit_resolvers.get(first, [])
    for first in {*_Loader.yaml_implicit_resolvers, *yaml.SafeDumper.yaml_implicit_resolvers}
}
_LINE_BREAKS = re.compile("[\r\n\x85\u2028\u2029]")


def _represent_str(dumper: _Dumper, text: str):
    # A line break double-quoted, as an escape: one line per value, not a single-quoted string folded
    # over lines whose blank lines stand for its line breaks.
    style = '"' if _LINE_BREAKS.search(text) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def dump(data, flow: bool = False) -> str:
    """`data` (plain data, as `load` builds) as YAML that `load` reads back as exactly `data`: in block
    style with keys in their order, or with `flow` on one line (as `--set` takes a value)."""
    text = yaml.dump(data, Dumper=_Dumper, default_flow_style=flow, sort_keys=False, allow_unicode=True,
                     width=float("inf"))  # not folded over lines: a long prompt or path stays one line
    return text.removesuffix("...\n").rstrip("\n") if flow else text  # strip() would take a trailing U+3000
