"""Checkpoints: plain tensors and values only, loadable with `torch.load(weights_only=True)`."""

import codecs
import collections
import pickle
import re
import zipfile
from pathlib import Path

import torch

from .. import plugins
from ..data.vocab import Vocab
from ..device import keep_random_state, resolve_device, torch_defaults
from ..diagnose import check_forward
from ..errors import GptkitWarning, OutOfMemory, UserError, on_command_line, one_line, out_of_memory, warn
from ..io import atomic_write, check_path_argument, home_path, missing, quote
from ..model import build_model
from ..recipe import Recipe, validate
from ..recipe.components import ComponentSpec, model_only
from ..registry import kinds, parse_record, record_change, registry

FORMAT = "gptkit-checkpoint"
VERSION = 1


def state_dict_mismatch(e: RuntimeError) -> str:
    """What does not fit, from load_state_dict's error (its first line is only a heading)."""
    return next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))[:300]


# What torch.load(weights_only=True) rebuilds; anything else in a checkpoint would make it unloadable.
PLAIN = {dict, collections.OrderedDict, list, tuple, str, int, float, bool, type(None), torch.Tensor,
         torch.nn.Parameter, torch.Size, torch.dtype, torch.device}


def unloadable(value, where: str) -> str | None:
    """'a numpy.float64 at WHERE.param_groups[0].norm': the first value in `value` that a checkpoint must
    not hold, being no tensor or plain value (a numpy scalar is a float to isinstance, not to torch.load);
    None if there is none."""
    kind = type(value)
    if kind not in PLAIN:
        return f"a {kind.__module__}.{kind.__qualname__} at {where}"
    if kind in (dict, collections.OrderedDict):
        items = value.items()
    elif kind in (list, tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = unloadable(key, f"{where} (a key)") or unloadable(item, f"{where}[{key!r}]")
        if found:
            return found
    return None


def on_cpu(value):
    """`value` with every tensor in it (in dicts, lists and tuples) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(on_cpu(v) for v in value)
    return value


def non_finite(weights: dict) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]


def save_checkpoint(path: Path, model: torch.nn.Module, recipe: dict, itos: list[str], parents: bool = False,
                    **extra) -> None:
    """Write atomically: a crash mid-save leaves the previous checkpoint intact. Only tensors and plain
    values, or no `torch.load(weights_only=True)` could read it back: refused here, not when resuming.
    `parents`: make the folders `path` needs (see atomic_write)."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    bad = non_finite(weights)
    if bad:  # never let a diverged model overwrite a good checkpoint
        raise ValueError(f"refusing to save non-finite weights: {', '.join(bad[:3])}")
    found = unloadable(extra, "checkpoint")
    if found:
        raise ValueError(f"refusing to save a checkpoint that could not be loaded safely: it holds {found}")
    extra = on_cpu(extra)  # an optimizer's state on a GPU: torch.load without map_location fails where there is none
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model": weights,
        "recipe": recipe,
        "vocab_size": len(itos),
        "stoi": {ch: i for i, ch in enumerate(itos)},
        "itos": list(itos),
        **extra,
    }
    atomic_write(path, lambda f: _save(state, f), parents)


def _save(state: dict, f) -> None:
    try:
        torch.save(state, f)
    except RuntimeError as e:  # torch's zip writer reports a failed write (a full disk) as its own error
        cause = e.__cause__ or e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        if cause is None:
            raise
        raise cause from None


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint at `path` (or `path/checkpoint.pt` for a run folder), loaded without unpickling
    anything but tensors and plain values."""
    path = Path(path)
    if path.is_dir() and path.name != "checkpoint.pt":  # a run folder
        if not (path / "checkpoint.pt").exists():
            raise UserError(f"checkpoint {path / 'checkpoint.pt'} not found{_why_no_checkpoint(path)}")
        path = path / "checkpoint.pt"
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder, not a file; it cannot be used")
    if not path.is_file():
        from .folder import runs_within  # (folder reads checkpoints)

        why = missing(path, "a checkpoint or a run folder")
        if why != "not found":  # a link that leads nowhere
            raise UserError(f"checkpoint {path} {why}")
        if path.name == "checkpoint.pt" and path.parent.is_dir():  # RUN/checkpoint.pt: as RUN would be told
            raise UserError(f"checkpoint {path} not found{_why_no_checkpoint(path.parent)}")
        near = runs_within(path.parent, called=str(path.parent)) or f"; give {RUN_OR_CHECKPOINT}"
        raise UserError(f"checkpoint or run folder {path} not found{near}")
    if _is_text(path):  # a recipe or a corpus given by mistake: not a checkpoint, damaged or not
        raise UserError(f"{path} is a text file, not a gptkit checkpoint; give a run folder or the checkpoint.pt "
                        "in one (a recipe is trained first: gptkit run RECIPE, or train_model(RECIPE))")
    damaged = f"checkpoint {path} is truncated or corrupted and cannot be read"
    try:  # torch.save writes a zip archive, whose checksums torch.load does not check: a flipped bit
        with zipfile.ZipFile(path) as archive:  # in the weights would load without a word
            bad = archive.testzip()
    except PermissionError as e:  # not damaged, for all we know: it cannot be read
        raise UserError(f"cannot read checkpoint {path}: {e.strerror}; give yourself read access to it") from None
    except Exception as e:  # zipfile raises more than BadZipFile on a damaged directory
        raise UserError(f"{damaged} ({one_line(e)})") from None
    if bad is not None:
        raise UserError(f"{damaged} ({bad} fails its checksum)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # checksums fine: written so, not damaged
        # Only the class's name: torch's message goes on to suggest allowing it, the one thing not to do here.
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise UserError(f"checkpoint {path} holds objects other than tensors and plain values"
                        f"{f' ({what[1]})' if what else ''}; refused without running them") from None
    except Exception as e:
        if out_of_memory(e):  # not the file's fault
            raise OutOfMemory(f"out of memory loading checkpoint {path} (the model's weights and optimizer state); "
                              "close other programs that use the machine's memory") from None
        raise UserError(f"{damaged} ({one_line(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path} is not a gptkit checkpoint")
    version = state.get("version", VERSION)
    if isinstance(version, int) and version > VERSION:
        raise UserError(f"checkpoint {path} was written by a newer gptkit (checkpoint format {version}; this one reads "
                        f"format {VERSION}); upgrade gptkit to use it")
    wrong = [key for key, kind in REQUIRED.items() if not isinstance(state.get(key), kind) or isinstance(state[key], bool)]
    if not isinstance(version, int):
        wrong.append("version")
    elif not wrong and state["step"] < 0:
        wrong = ["step (a count of steps, 0 or more)"]
    elif not wrong and len(state["itos"]) != state["vocab_size"]:
        wrong = ["itos (as many characters as vocab_size)"]
    elif not wrong and not all(isinstance(c, str) and len(c) == 1 for c in state["itos"]):
        wrong = ["itos (a list of single characters)"]
    elif not wrong and len(set(state["itos"])) != len(state["itos"]):
        wrong = ["itos (each character once)"]
    if wrong:  # a hand-made or damaged file: said here, not as a KeyError deep in resume or sampling
        raise UserError(f"checkpoint {path} lacks a valid {', '.join(wrong)}; it cannot be used")
    return state


RUN_OR_CHECKPOINT = "a run folder (runs/NAME-YYYYmmdd-HHMMSS) or a checkpoint file"


def _why_no_checkpoint(folder: Path) -> str:
    """Why the folder has no checkpoint.pt, when it says: an ablation's folder, or a run that stopped
    before its first save. "" otherwise."""
    from .folder import ablation_run_example, is_ablation_folder, runs_within, summary_of  # folder reads checkpoints
    if is_ablation_folder(folder):
        return (f": {folder} is an ablation folder, not a run folder: sample one of its runs, e.g. "
                f"gptkit sample {quote(folder / ablation_run_example(folder))}")
    is_run = (folder / "recipe.yaml").is_file()
    within = "" if is_run else runs_within(folder)
    if within:
        return f": {folder} is not a run folder{within}"
    from .resume import with_live_status  # (resume reads checkpoints)

    summary = with_live_status(folder, summary_of(folder))
    status = summary.get("status")
    if status == "failed":
        reason = summary.get("reason")
        return (f": the run's summary.json says it failed{f' ({reason})' if reason else ''} before its first "
                "save, so nothing was saved; fix that and train it again")
    if isinstance(status, str) and is_run:  # running, interrupted, killed
        return (f": the run has no checkpoint yet ({status}, before its first save)"
                + ("" if status == "running" else f"; gptkit run --resume {quote(folder)} starts it over"))
    return "" if is_run else f": {folder} is not a run folder; give {RUN_OR_CHECKPOINT}"


def peek(path: Path, key: str):
    """The checkpoint's `key` entry (None if it has none), read by mapping the file: only that entry is
    read, not the weights (an ablation asks every run's). A damaged file is load_checkpoint's error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(key)
    except Exception:  # damaged, or not a checkpoint: load_checkpoint says which
        return load_checkpoint(path).get(key)


REQUIRED = {"model": dict, "recipe": dict, "vocab_size": int, "itos": list, "step": int}


def saved_model(path: Path) -> bool:
    """Whether `path` holds a model as train_model saves one: a checkpoint without a run's training state.
    Only its entries' index is read (mapped), not the weights."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a checkpoint at all (text, a damaged file): not one to overwrite unasked
        return False
    return isinstance(state, dict) and REQUIRED.keys() <= state.keys() and "trainer" not in state


def _is_text(path: Path) -> bool:
    """Whether the file starts as UTF-8 text. A checkpoint, even a damaged one, does not: torch writes a
    zip archive, whose headers hold zero bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:  # reported with the reading of the checkpoint itself
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end of `head` is fine
    except UnicodeDecodeError:
        return False
    return bool(head) and b"\0" not in head


def load_model(path: str | Path, device: str | torch.device = "cpu", check: bool = True):
    """(model, recipe, vocab) from a checkpoint or run folder, ready for inference on `device` (default
    cpu; auto, cpu, cuda, cuda:N or mps, or a torch.device), its recipe validated as `load_recipe` validates one (unless a
    plugin the run only trained with is gone: its components then keep their parameters as written).
    With `check`, the checks before training run on it (`diagnose.check_forward`): a plugin component
    whose forward is broken is an error naming it, and a key/value cache that does not match a full
    pass is a GptkitWarning; the model then samples without the cache. A model component that now comes
    from another version of its plugin, or other code, than the run was trained with is a
    PluginChangedWarning: the weights fit, the text may differ."""
    check_path_argument("load_model's path", path)
    path = home_path(path, str(path))  # ~/model.pt, as train_model's save_path may have been
    device = resolve_device(str(device), "load_model's device")  # before loading: a missing GPU is said first
    state = load_checkpoint(path)
    recipe = stored_recipe(state, path)
    changes = plugin_changes(state.get("plugins"), recipe, prefix="model.")
    for change in changes:
        warn(f"{change}; sampling with it", PluginChangedWarning)
    # float32 weights whatever the caller's default dtype; the initial weights drawn and overwritten cost a
    # notebook's later draws nothing
    with torch_defaults(), keep_random_state(device):
        model = build_model(recipe.model, state["vocab_size"])
        load_weights(model, state, path, changes)
        model = model.to(device).eval()
        warning = check_forward(model, recipe.model) if check else None
    if warning:
        warn(warning)
    return model, recipe, Vocab(state["itos"])


def stored_recipe(state: dict, path: str | Path) -> Recipe:
    """The recipe of checkpoint `state`, validated in full, as `load_recipe` validates it; failing that (a
    plugin the run only trained with is gone, say), with its training-only components kept as written
    (`model_only`): sampling needs only the model's."""
    origin = f"the recipe stored in {path}"
    try:
        return validate(state["recipe"], origin=origin)
    except UserError:
        pass
    try:
        with model_only():
            return validate(state["recipe"], origin=origin)
    except UserError as e:
        used = state.get("plugins", {})
        raise UserError(f"{e}{missing_plugins(used)}{changed_plugins(used)}") from None


class PluginChangedWarning(GptkitWarning):
    """A loaded model's component comes from another plugin version, or other code, than it trained with."""


def plugin_changes(trained, recipe: Recipe, prefix: str = "") -> list[str]:
    """What has changed in where a run's components come from: "model.norm (unitnorm) was trained with
    acme-norms 1.2 and now comes from acme-norms 1.3", or "... was trained with acme-norms 1.2, whose code
    has changed since (sha256 ...)", for each component under `prefix` of the run's plugins record
    (`trained`: {"model.norm": "unitnorm from acme-norms 1.2 (sha256 ...)"}, as Recipe.plugin_sources
    writes it into checkpoint.pt and summary.json) that `recipe` would now take from another version
    of its package, other code, another package (or file, or gptkit itself). A component the recipe no
    longer has, or names otherwise, is a change of recipe, not of source."""
    if not isinstance(trained, dict):  # absent: a checkpoint written before gptkit recorded plugins
        return []
    changes = []
    for key, was in sorted(trained.items()):
        section, _, field = str(key).partition(".")
        spec = getattr(getattr(recipe, section, None), field, None) if field and str(key).startswith(prefix) else None
        if isinstance(spec, ComponentSpec) and spec.name == parse_record(was)[0]:
            changes += filter(None, [_source_change(str(key), was)])
    return changes


def _source_change(key: str, was: str) -> str | None:
    """"model.norm (unitnorm) was trained with acme-norms 1.2 and now comes from ..." for the run's record
    `was` of the component at `key`, which is known here (see `record_change`); None if it is the same."""
    kind, name = key.rpartition(".")[2], parse_record(was)[0]
    change = record_change(was, f"{name} from {registry(kind).entry(name).origin}")  # a built-in's: "built-in"
    return f"{key} ({name}) {change}" if change else None


def missing_plugins(used: dict[str, str], prefix: str = "model.") -> str:
    """A hint naming the components of a run's plugins record (`used`: {"model.norm": "unitnorm from
    acme-norms 1.2"}) under `prefix` now unknown here, if any: the likely cause of a failed load (to
    sample, only the model's components are needed) or resumption (prefix "": all of them). Not for a
    clash or a broken plugin, whose errors say so themselves."""
    known = kinds()
    gone = {f"{key}: {what}": parse_record(what)[1] for key, what in (used.items() if isinstance(used, dict) else ())
            if isinstance(key, str) and isinstance(what, str) and key.startswith(prefix) and key.rpartition(".")[2] in known
            and parse_record(what)[0] not in registry(key.rpartition(".")[2])}  # {line: source}
    if not gone:
        return ""
    files = sorted({source for source in gone.values() if source.endswith(".py")})
    if files and all(source in files and not Path(source).is_file() for source in gone.values()):
        why = "that file is gone: put it back" if len(files) == 1 else "those files are gone: put them back"
    elif files and all(source in plugins.local_paths() for source in gone.values()):
        one = len(gone) == 1
        why = (f"{'that file, run here, registers' if len(files) == 1 else 'those files, run here, register'} "
               f"{'it' if one else 'them'} no more: {'was the component' if one else 'were the components'} "
               "renamed or removed since the run?")
    elif all(source == "__main__" or source in files for source in gone.values()):  # a script's, not a package's
        why = "registered in Python, not installed: register it in this process first (run or import that code)"
    elif plugins.enabled():  # a package's: which, at which version (the one it trained with)
        pins = sorted({f"{d}=={v}" for d, v in (s.split(" ") for s in gone.values() if re.fullmatch(r"[\w.-]+ \S+", s))})
        why = f"install {' and '.join(pins)}, the version{'s' if len(pins) > 1 else ''} it trained with" if pins \
            else "is it installed?"
    else:  # the registry's error has said that plugins are off
        why = f"unset GPTKIT_NO_PLUGINS{' (or leave out --no-plugins)' if on_command_line() else ''} to use them"
    return f"\n(the run was trained with {'; '.join(gone)}: {why})"


def changed_plugins(used: dict[str, str], prefix: str = "model.") -> str:
    """A hint naming the components of a run's plugins record under `prefix` that are known here but come
    from another version of their package, or other code: parameters renamed or removed since are the
    likely cause of a stored recipe that no longer validates."""
    changes = [_source_change(key, was) for key, was in (used.items() if isinstance(used, dict) else ())
               if isinstance(key, str) and isinstance(was, str) and key.startswith(prefix)
               and key.rpartition(".")[2] in kinds() and parse_record(was)[0] in registry(key.rpartition(".")[2])]
    changes = [c for c in changes if c]
    if not changes:
        return ""
    return (f"\n({'; '.join(sorted(changes))}: its parameters may differ from that version's; install the version "
            "the run was trained with to use the run)")


def load_weights(model: torch.nn.Module, state: dict, path: Path, changes: list[str] = ()) -> None:
    """The checkpoint's weights into `model`, which its recipe built; `changes`: the model's components
    that come from other code than the run trained with (plugin_changes), the likely cause of a misfit."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        why = f": {'; '.join(changes)}; the weights are that code's" if changes else \
            "; was it written by another version of a component?"
        raise UserError(f"checkpoint {path}: its weights do not fit the model its recipe describes "
                        f"({state_dict_mismatch(e)}){why}") from None
    bad = non_finite(state["model"])
    if bad:  # save_checkpoint never writes such weights (a diverged step is not saved): damage, or an edit
        raise UserError(f"checkpoint {path}: its weights are not finite ({bad[0]} holds NaN or inf), so the model "
                        "computes nothing; the file was damaged or edited: use another checkpoint")
