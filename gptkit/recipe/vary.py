"""`--vary KEY=VALUE,VALUE`: one recipe key given several values, each as YAML text (`gptkit ablate`
trains an arm per value, `gptkit bench` measures a variant per value)."""

from ..errors import UserError


def split_values(text: str) -> list[str]:
    """Split at top-level commas: "rope,{name: alibi, slopes: x}" -> ["rope", "{name: alibi, slopes: x}"].
    As in YAML, a quote opens a quoted value only where a value starts: 'a,b' is one value, it's,b two."""
    values, depth, quote, start, i = [], 0, None, 0, 0
    opens = True  # whether a quote here would start a quoted value: after , [ { or ": "
    while i < len(text):
        ch = text[i]
        if quote:
            if quote == '"' and ch == "\\" or quote == "'" and text[i:i + 2] == "''":
                i += 1  # an escaped character, or '' (a quote inside single quotes): never the closing quote
            elif ch == quote:
                quote = None
        elif ch in "'\"" and opens:
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
        after_colon = i > 0 and text[i - 1] == ":"
        opens = ch in ",[{" or (ch.isspace() and (opens or after_colon))
        i += 1
    values.append(text[start:].strip())
    return values


def parse_vary(texts, usage: str = "KEY=VALUE,VALUE,... e.g. --vary model.positional=sinusoidal,rope"
               ) -> dict[str, list[str]]:
    """{KEY: [VALUE, ...]}, values as YAML text, from `--vary KEY=VALUE,VALUE` flags: ablate's and bench's."""
    vary: dict[str, list[str]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not values or not all(values):
            raise UserError(f"--vary {text}: expected {usage}")
        if key in vary:
            raise UserError(f"--vary {key} is given twice; list all its values in one --vary")
        vary[key] = values
    return vary
