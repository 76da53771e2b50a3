"""Where third-party components come from: installed packages' entry points, and local Python files.

A package declares one entry point per component in the group `gptkit.<kind>`, named like the
component, with the value `module:object`. Entry points are read from package metadata once per
process, on first need, without importing anything; a component's module is imported only when
that component is used (see `Registry.entry`). `GPTKIT_NO_PLUGINS=1` (any value but
empty, 0, false, no or off) or `gptkit --no-plugins` turns all of it off.
"""

import ast
import contextlib
import functools
import hashlib
import importlib.metadata as metadata
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError, on_command_line, one_line
from .io import missing

GROUP_PREFIX = "gptkit."


@dataclass(frozen=True)
class Plugin:
    """One entry point: a component `name` of `kind` that `dist` says lives at `value` (module:object)."""

    kind: str
    name: str
    value: str
    dist: str
    version: str
    entry_point: metadata.EntryPoint

    @property
    def source(self) -> str:
        return f"{self.dist} {self.version}"


_declared: dict[str, dict[str, list[Plugin]]] | None = None  # kind -> name -> claims, one per distribution


def turned_off() -> str:
    """Said where a plugin's name is unknown: what turns plugins off, as the caller can (--no-plugins is a
    `gptkit` command's)."""
    return f"plugins are turned off by GPTKIT_NO_PLUGINS{' or --no-plugins' if on_command_line() else ''}"


def enabled() -> bool:
    """Whether installed plugins are used: GPTKIT_NO_PLUGINS unset, or set to a false spelling (empty, 0,
    false, no, off, in any case); any other value (1, true, yes, ...) turns them off."""
    return os.environ.get("GPTKIT_NO_PLUGINS", "").strip().lower() in ("", "0", "false", "no", "off")


def switch_off() -> None:
    """What `gptkit --no-plugins` does: this process, and every process it starts (bench workers),
    uses built-in and local components only. Through the environment, which children inherit."""
    os.environ["GPTKIT_NO_PLUGINS"] = "1"


def declared(kind: str) -> dict[str, list[Plugin]]:
    """The components installed packages declare for `kind`, read from metadata only. A name claimed
    by more than one distribution maps to every claim; the caller reports the clash."""
    return _read().get(kind, {}) if enabled() else {}


def package_of(module: str) -> str | None:
    """The installed distribution that declares components and whose package holds `module` (one of its
    entry points lives in the same package), or None: a local file, a notebook, gptkit itself, a package
    that declares no component."""
    home = _home(module)
    return next((p.dist for kind in declared_kinds() for claims in declared(kind).values() for p in claims
                 if _home(p.entry_point.module) == home), None)


def _home(module: str) -> str:
    """The package `module` belongs to: its top-level one, or below a namespace package (acme.norms and
    acme.other, of two distributions sharing `acme`), the first level that is not one."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        loaded = sys.modules.get(".".join(parts[:i]))
        if loaded is None or getattr(loaded, "__file__", None) is not None:
            return ".".join(parts[:i])
    return module


def declared_kinds() -> list[str]:
    """Every kind some installed package declares components for, known to gptkit or not."""
    return sorted(_read()) if enabled() else []


def _read() -> dict[str, dict[str, list[Plugin]]]:
    global _declared
    if _declared is None:
        _declared = _scan()
    return _declared


def forget() -> None:
    """Read entry points and plugins' code afresh on the next look-up (after installing a package or
    editing one, or in tests)."""
    global _declared
    _declared = None
    _code.clear()


def _scan() -> dict[str, dict[str, list[Plugin]]]:
    found: dict[str, dict[str, list[Plugin]]] = {}
    seen: set[str] = set()
    for dist in metadata.distributions():
        dist_name = dist.metadata["Name"] or Path(str(getattr(dist, "_path", "?"))).name  # (metadata without a name)
        key = _normalize(dist_name)
        # A distribution found again further down sys.path (an editable install's egg-info beside its
        # dist-info, a stale copy in the user site) is not another claim: only the first is the one
        # imported, and its entry points alone count, as importlib.metadata.entry_points() has it.
        if key in seen:
            continue
        seen.add(key)
        for ep in dist.entry_points:
            if not ep.group.startswith(GROUP_PREFIX):
                continue
            kind = ep.group.removeprefix(GROUP_PREFIX)
            plugin = Plugin(kind, ep.name, ep.value, dist_name, dist.version, ep)
            found.setdefault(kind, {}).setdefault(ep.name, []).append(plugin)
    return found


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


_code: dict[str, str | None] = {}  # a top-level package's (or module's) name -> code_sha256 of it


def code_sha256(obj) -> str | None:
    """The SHA-256 of the source of the package that defines `obj`: every .py file under the folder of its
    outermost regular package (a namespace package above it holds other distributions too), in path
    order, or the one file of a top-level module. How a run records which code of a plugin it trained:
    an editable install (pip install -e) changes it without a new version (compiled extensions are not
    read). Read once per package per process; None for code with no source files."""
    parts = (getattr(obj, "__module__", None) or "").split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    top = next((n for n in names if getattr(sys.modules.get(n), "__file__", None)), names[-1])
    if top not in _code:
        _code[top] = _tree_sha256(sys.modules.get(top))
    return _code[top]


def _tree_sha256(module) -> str | None:
    folders = [Path(p) for p in getattr(module, "__path__", None) or ()]  # a package's
    file = getattr(module, "__file__", None) or ""
    if not folders:  # a module of one file: hashed as a local file is
        return python_file_sha256(file)
    files = [(f.relative_to(d), f) for d in folders for f in sorted(d.rglob("*.py"))]
    h = hashlib.sha256()
    try:
        for name, path in files:  # each file's name too: a file renamed or moved is other code
            data = path.read_bytes()
            h.update(f"{name.as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    except OSError:  # unreadable: no hash, rather than one of part of the code
        return None
    return h.hexdigest() if files else None


@functools.cache  # read once per process (not forgotten with the plugins' code hashes): do not change it
def software() -> dict[str, str]:
    """What trained a run besides its recipe and plugins: gptkit's version and a hash of its code (an
    editable install changes without a new version; the version names the installed copy, which need
    not be the one imported), torch's and Python's versions. Seeds trained by other gptkit code or
    another torch are not pooled in an ablation (a change of numerics shows as a change of loss)."""
    import platform

    import torch  # (imported by gptkit already: named here for its version)

    try:
        version = metadata.version("gptkit")
    except metadata.PackageNotFoundError:  # a source folder on PYTHONPATH
        version = "unknown"
    code = _tree_sha256(sys.modules[__package__]) or "unknown"
    return {"gptkit": version, "gptkit_sha256": code[:12], "torch": str(torch.__version__),
            "python": platform.python_version()}


def software_text(record) -> str | None:
    """"gptkit 0.1.0 (sha256 a1b2c3d4e5f6), torch 2.13.0" for a run's `software` record; None for none (a run
    from before gptkit recorded it) or a damaged one."""
    if not (isinstance(record, dict) and {"gptkit", "gptkit_sha256", "torch"} <= record.keys()):
        return None
    return f"gptkit {record['gptkit']} (sha256 {record['gptkit_sha256']}), torch {record['torch']}"


def software_changes(trained) -> list[str]:
    """"gptkit code sha256 a1b2c3d4e5f6, now 0a1b2c3d4e5f" and "torch 2.4.0, now 2.13.0" where `trained` (a
    run's `software` record; absent before gptkit recorded it: nothing can be said) differs from this
    process's: gptkit by its code alone (the same code run from its folder or installed is the same)."""
    if not isinstance(trained, dict):
        return []
    now = software()
    return [f"{what} {trained[key]}, now {now[key]}" for key, what in (("gptkit_sha256", "gptkit code sha256"),
                                                                       ("torch", "torch"))
            if isinstance(trained.get(key), str) and trained[key] != now[key]]


LOCAL_PREFIX = "gptkit_local_"  # the module names of local files
_ran: dict[str, str] = {}  # a local file's module name -> the SHA-256 of the source it last ran


def file_sha256(path: Path | str) -> str:
    """The SHA-256 of a file's bytes: how a run records which local component code it trained."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def class_code_sha256(cls: type) -> str:
    """A SHA-256 of what a class defined in a notebook cell (or anywhere without a source file) runs: the
    bytecode, names and constants of its methods and of its bases' up to gptkit's, and its Params' fields.
    Not file names or line numbers, which change every time a notebook re-runs an unchanged cell."""
    h = hashlib.sha256()

    def code(c) -> None:
        h.update(c.co_code)
        h.update(repr((c.co_names, c.co_varnames)).encode())
        for const in c.co_consts:  # (a frozenset's order changes with the process's string hashing)
            if hasattr(const, "co_code"):
                code(const)
            else:
                h.update(repr(sorted(map(repr, const)) if isinstance(const, frozenset) else const).encode())

    for klass in cls.__mro__:
        if klass.__module__.partition(".")[0] in ("gptkit", "torch", "builtins", "abc", "typing"):
            continue
        for name, value in sorted(vars(klass).items()):
            func = getattr(value, "__func__", value)  # a classmethod's or staticmethod's function
            func = getattr(func, "fget", func)  # a property's getter
            if hasattr(func, "__code__"):
                h.update(f"{name}\0{func.__defaults__!r}".encode())
                code(func.__code__)
    params = getattr(cls, "Params", None)
    with contextlib.suppress(Exception):  # a Params that cannot say its schema is BROKEN: the registry says why
        h.update(repr(sorted(params.model_json_schema().items())).encode())
    return h.hexdigest()


def local_code_sha256(path: str) -> str | None:
    """The SHA-256 of a local component file's code: python_file_sha256 of the file alone if it imports no
    module beside it; else of the file and every module (or package) beside it that it imports, theirs too
    (found by reading their import statements), each with its name: an edit to a helper module is then an
    edit to the file's code, which a resumed run warns of. None for no readable Python file."""
    files = _local_code_files(Path(path)) if path.endswith(".py") else []
    if len(files) <= 1:
        return python_file_sha256(path)
    h = hashlib.sha256()
    try:
        for f in files:
            data = f.read_bytes()
            h.update(f"{f.relative_to(files[0].parent).as_posix()}\0{len(data)}\0".encode())
            h.update(data)
    except OSError:
        return None
    return h.hexdigest()


def _local_code_files(path: Path) -> list[Path]:
    """`path` and the files of the modules beside it that it imports, theirs too, in a fixed order. gptkit
    itself is not one of them, even beside a checkout of it: its code is recorded apart (`software`)."""
    folder, files, todo = path.parent, [], [path]
    while todo:
        file = todo.pop(0)
        if file in files:
            continue
        files.append(file)
        for name in sorted(_imported_names(file) - {"gptkit"}):
            if (folder / f"{name}.py").is_file():
                todo.append(folder / f"{name}.py")
            elif (folder / name / "__init__.py").is_file():
                todo += sorted((folder / name).rglob("*.py"))
    return files


def _imported_names(file: Path) -> set[str]:
    """The top-level names of the modules `file` imports absolutely (`import a.b`, `from a import b`: a)."""
    try:
        tree = ast.parse(file.read_bytes())
    except (OSError, SyntaxError, ValueError):  # running it says what is wrong
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def python_file_sha256(path: str) -> str | None:
    """file_sha256 of `path` if it is a readable Python file (a local component's, a one-file plugin's), else
    None: code with no source to record."""
    if not path.endswith(".py"):
        return None
    try:
        return file_sha256(path)
    except OSError:
        return None


def local_paths() -> set[str]:
    """The local component files run in this process (a recipe's imports, --import)."""
    return {sys.modules[m].__file__ for m in _ran if getattr(sys.modules.get(m), "__file__", None)}


def local_files() -> list[str]:
    """local_paths(), by name."""
    return sorted({Path(p).name for p in local_paths()})


def import_file(path: Path) -> None:
    """Run a local Python file, so the components it registers exist: once per process, and again once
    it is edited. It may import modules beside it, as a script may. An error in it becomes a UserError
    naming the file and line."""
    try:
        path = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop (RuntimeError); a NUL or lone surrogate in the name
        raise UserError(f"component file {path} {missing(Path(path))}") from None
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"{LOCAL_PREFIX}{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"  # one per file
    if not path.exists() and module_name in sys.modules:
        return  # gone since it ran (a recipe loaded again): its components stay registered
    if path.is_dir():
        raise UserError(f"component file {path} is a directory, not a .py file")
    if not path.is_file():
        raise UserError(f"component file {path} {'is not a regular file' if path.exists() else missing(path)}")
    if path.suffix != ".py":  # importlib finds no loader for other names
        raise UserError(f"component file {path} must be a .py file")
    from .registry import registering_again  # (it imports this module)

    source = file_sha256(path)
    if _ran.get(module_name) == source and module_name in sys.modules:
        return  # an edited file runs again, and its components replace the earlier ones (see Registry.register)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))  # only while it runs: the folder must not shadow other imports later
    try:
        with registering_again(module_name):
            spec.loader.exec_module(module)
        _ran[module_name] = source
    except UserError as e:  # e.g. a name registered twice: already explained, say where in the file
        del sys.modules[module_name]
        raise UserError(f"{path}{line_in(path, e)}{raised_beside(path, e)}: {e}") from None
    except (Exception, SystemExit) as e:  # the file may raise anything, even exit: the user needs the line
        del sys.modules[module_name]
        raise UserError(f"{path}{line_in(path, e)}{raised_beside(path, e)}: {load_failure(e)}") from None
    finally:
        sys.path.remove(str(path.parent))


# pydantic's errors for a field type it cannot validate, or cannot describe as JSON (what a recipe holds)
_UNHANDLED_TYPE = ("schema-for-unknown-type", "invalid-for-json-schema")
PLAIN_TYPES = "int, float, bool, str, Literal, lists of those"


def load_failure(e: BaseException) -> str:
    """`one_line(e)`, for a plugin or file that failed to load: what a listing of broken components can
    hold. pydantic's several paragraphs about a field type it cannot handle become the fix a
    component's author needs."""
    if getattr(e, "code", None) in _UNHANDLED_TYPE:
        found = re.search(r"<class '([^']+)'>", str(e))
        what = f"a field of type {found.group(1)}" if found else "a field's type"
        return (f"{what} is not one pydantic can check and write to a recipe; give Params fields plain "
                f"types ({PLAIN_TYPES})")
    return one_line(e)


def raised_in_package(module: str, e: BaseException) -> str:
    """' (at FILE:LINE)': the deepest line of `module`'s top-level package (or module) that `e` was
    raised through; '' if none (the package cannot be found without importing it, `e` never passed
    through it, or is a SyntaxError, whose message says where)."""
    try:
        spec = importlib.util.find_spec(module.partition(".")[0])  # top level: finding it runs nothing
    except (ImportError, ValueError):
        return ""
    if spec is None:
        return ""
    roots = [Path(d) for d in spec.submodule_search_locations or ()]

    def ours(file: str) -> bool:
        return file == spec.origin or any(Path(file).is_relative_to(root) for root in roots)

    frames = [f for f in traceback.extract_tb(e.__traceback__) if ours(f.filename)]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def raised_beside(path: Path, e: BaseException) -> str:
    """', at helpers.py:3' where `e` was raised in a module beside the file `path` that the file imports
    (its deepest frame in that folder), else '' (a syntax error names its file itself)."""
    beside = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).parent == path.parent]
    if not beside or beside[-1].filename == str(path):
        return ""
    return f", at {Path(beside[-1].filename).name}:{beside[-1].lineno}"


def line_in(path: Path, e: BaseException) -> str:
    """':LINE' of the deepest frame of `e` inside `path` (or of a syntax error in it), else ''."""
    if isinstance(e, SyntaxError) and e.filename == str(path) and e.lineno:
        return f":{e.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
    return f":{lines[-1]}" if lines else ""
