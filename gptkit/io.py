"""File reading and atomic writing (a reader never sees a half-written file), and what a path names:
a ~ to expand, a file that is missing."""

import contextlib
import errno
import glob
import json
import os
import shlex
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from .errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # a write's errno for want of space, or of the user's quota of it


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of `path` with `\n` line endings and no byte-order mark (a text joined from files by
    `cat` may hold several); a missing, unreadable or non-UTF-8 file is a UserError naming it."""
    if not path.is_file():
        why = "is a folder, not a file" if path.is_dir() else "is not a regular file" if path.exists() else missing(path)
        raise UserError(f"{what} file {path} {why}")
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines: \r\n and a lone \r become \n
    except UnicodeDecodeError as e:
        raise UserError(f"{what} file {path} {not_utf8(e)}") from None
    except OSError as e:
        raise UserError(f"cannot read {what} file {path}: {e.strerror}") from None
    except MemoryError:  # a whole text is read at once: a text of gigabytes on a small machine
        part = "; train on a part of it (head -n 1000000 FILE > part.txt, say)" if what == "data.path" else ""
        raise UserError(f"{what} file {path} ({path.stat().st_size:,} bytes) is too large for this machine's "
                        f"memory{part}") from None
    if "\0" in text:  # ASCII text in UTF-16 without a byte-order mark is valid UTF-8, NULs and all
        source = encoding_of(path.read_bytes()[:4096])
        if source is None and looks_binary(text[:4096]):
            raise UserError(f"{what} file {path} contains NUL bytes: it looks like a binary file, not text")
        if source and source.startswith("utf-16"):
            raise UserError(f"{what} file {path} is not UTF-8 text; convert it first, e.g. iconv -f {source} -t utf-8")
        line = text.count("\n", 0, text.index("\0")) + 1  # UTF-8 text with a NUL past its first bytes
        raise UserError(f"{what} file {path} has a NUL character on line {line:,}; remove it, e.g. with tr -d '\\000'")
    return text.replace("\ufeff", "")


def not_utf8(e: UnicodeDecodeError) -> str:
    """Why bytes are not UTF-8, and what to do, as the rest of a sentence naming the file. A file cut
    short, or UTF-8 text with a stray byte, must not be converted as a whole: that garbles every other
    non-ASCII character."""
    data, at = e.object, e.start
    line = data.count(b"\n", 0, at) + 1
    where = f"at offset {at:,}, line {line:,}"
    if e.end == len(data) and e.reason == "unexpected end of data" and not data[:at].isascii():
        return (f"ends in the middle of a UTF-8 character {where}: it looks cut short; "
                "copy it again, or drop the last bytes")
    if not data[:at].isascii():  # UTF-8 characters before the bad byte: the text is UTF-8 but for it
        return (f"is UTF-8 text with an invalid byte {data[at]:#04x} {where}; correct it there, or drop every "
                "invalid byte with iconv -f utf-8 -t utf-8 -c")
    source = encoding_of(data[:4096])
    if source is None:
        return "contains NUL bytes: it looks like a binary file, not text"
    return f"is not UTF-8 text (byte {data[at]:#04x} {where}); convert it first, e.g. iconv -f {source} -t utf-8"


def looks_binary(head: str) -> bool:
    """Whether text that decodes as UTF-8 is a binary file's bytes all the same: control characters in
    more than one of its first hundred characters, where text holds a stray NUL or two."""
    controls = sum(c < " " and c not in "\t\n\r\f\v\x1b" for c in head)
    return controls > max(1, len(head) // 100)


def missing(path: Path, what: str = "a file") -> str:
    """Why `path`, which does not exist, is not there, as the rest of a sentence naming it: "not found",
    or a symbolic link that leads nowhere (to be pointed at `what`)."""
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"is a symbolic link loop (following its links leads back to it); point it at {what}"
    except ValueError:  # a NUL in the name
        pass
    if path.is_symlink():
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return "not found"


def check_path_argument(name: str, value, optional: bool = False) -> None:
    """A TypeError naming the argument `name` unless `value` is a path (a str or os.PathLike; or None, if
    `optional`), rather than one from deep inside pathlib."""
    if not (isinstance(value, str | os.PathLike) or optional and value is None):
        raise TypeError(f"{name} must be a path (a str or Path), got {type(value).__name__}")


def quote(path: str | os.PathLike) -> str:
    """`path` as a command printed to be pasted into a shell must hold it: 'runs/my run' quoted."""
    return shlex.quote(str(path))


def expand_home(path: str | os.PathLike) -> Path:
    """`path` with a leading ~ or ~USER made that home folder; a ValueError saying why where there is
    none (no such user; HOME unset and no home for this user in the password file)."""
    try:
        return Path(path).expanduser()
    except RuntimeError:  # pathlib's "Could not determine home directory." for both
        first = Path(path).parts[0]
        who = "HOME is not set and this user has no home folder" if first == "~" else f"there is no user {first[1:]}"
        raise ValueError(f"cannot expand {first}: {who}; write the path out in full") from None


def home_path(path: str | os.PathLike, named: str) -> Path:
    """`path` with ~ expanded (`expand_home`), or a UserError naming it as `named` ("--resume ~x/run")
    where there is no home to expand to."""
    try:
        return expand_home(path)
    except ValueError as e:
        raise UserError(f"{named}: {e}") from None


def encoding_of(head: bytes) -> str | None:
    """A guess at the encoding of text that is not UTF-8, from its first bytes: UTF-16 starts with its
    byte-order mark or, without one, has NUL in every other byte of ASCII text; an 8-bit encoding holds
    no NUL at all. None: a binary file."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    if b"\0" not in head:
        return "latin1"
    for order, high, low in (("le", head[1::2], head[0::2]), ("be", head[0::2], head[1::2])):
        if high.count(0) > 0.9 * len(high) and low.count(0) < 0.1 * len(low):  # not an array of small integers
            return f"utf-16{order}"
    return None


def cannot_make_folder(folder: Path) -> str | None:
    """Why `folder` could not be made, or written in if it exists, as a phrase ("/x/notes.txt is a file,
    not a folder"); None when nothing that can be seen without making it stands in the way. Its nearest
    existing ancestor must be a folder this process may write in."""
    folder = Path(os.path.abspath(folder))
    for path in (folder, *folder.parents):
        try:
            is_dir = path.is_dir()
            if not is_dir and not path.exists():
                if path.is_symlink():  # a link that leads nowhere: no folder can be made in its place
                    return f"{path} {missing(path, 'a folder')}"
                continue
        except OSError:  # a folder above it that may not be entered: checked below, as a parent
            continue
        if not is_dir:
            return f"{path} is a file, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    return None


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], parents: bool = False) -> None:
    """Write through `write(file)` to a temporary file beside `path`, flush it to disk, then rename it
    over `path`. A crash at any point leaves either the old file or the new one, never a mix. An
    OSError names `path`, not the temporary file the user never asked for. With `parents`, the folders
    `path` needs are made (and removed again when the write fails); without, a folder that is not there
    is an error: a run's folder moved or deleted while it trains is not made again, half empty."""
    given = path  # what errors name
    if path.is_symlink():  # written where the link leads, which stays a link (to a shared drive, say)
        path = Path(os.path.realpath(path))
    try:  # a file written anew keeps its permissions (a private one stays private)
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = 0o666 & ~_umask()
    made = make_folders(path.parent) if parents else []  # its error names the folder it could not make
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # see `temporaries`
    except OSError as e:
        remove_empty(made)
        raise _naming(e, given) from None
    try:
        with os.fdopen(fd, "wb") as f:  # owns the descriptor from here, whatever follows raises
            if hasattr(os, "fchmod"):  # mkstemp's 0600 would make every file private to its owner
                with contextlib.suppress(OSError):  # best effort: a file system that keeps its own modes
                    os.fchmod(f.fileno(), mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        remove_empty(made)
        if isinstance(e, OSError) and e.errno is not None:
            raise _naming(e, given) from None
        raise


def temporaries(folder: Path, name: str | None = None) -> Iterator[Path]:
    """The temporary files in `folder` of `atomic_write`s killed midway: of the file `name`, or of any."""
    return folder.glob(f".{'*' if name is None else glob.escape(name)}.*.tmp")


def make_folders(folder: Path, exist_ok: bool = True) -> list[Path]:
    """`folder.mkdir(parents=True)`; the folders it made, deepest first, for `remove_empty` to remove
    when what they were made for fails. A failure midway removes those it had made."""
    made = []
    for above in (folder, *folder.parents):
        if os.path.isdir(above):
            break
        made.append(above)
    try:
        folder.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:  # made meanwhile by another process, whose folder it is
        raise
    except BaseException:
        remove_empty(made)
        raise
    return made


def remove_empty(folders: list[Path]) -> None:
    """Remove `folders`, deepest first, while they are empty: one that is not (another process wrote
    in it meanwhile) stays, and so do those above it."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # where making them stopped
            continue
        except OSError:
            return


def _naming(e: OSError, path: Path) -> OSError:
    """`e` (a full disk, a read-only folder) about `path` rather than its temporary file."""
    return OSError(e.errno, e.strerror, str(path))


def write_text(path: Path, text: str, parents: bool = False) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), parents)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the new directory entry reaches the disk, not just the file's data."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
