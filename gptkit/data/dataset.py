"""A character-level dataset over any UTF-8 text, split into training and validation text.

Tokens are stored once, as the text's character ids; batches are gathered from window start
offsets, so memory stays proportional to the text, never to the number of windows.
"""

import contextlib
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import UserError, counted, on_command_line, overrides_example
from ..io import (DISK_FULL, cannot_make_folder, make_folders, missing, quote, read_text, remove_empty, temporaries,
                  write_text)
from .vocab import Vocab


LONGER = "use a longer text"  # CharDataset's advice for a text too short, unless the caller knows better


class CharDataset:
    """Characters of `text` as token ids; the last `val_fraction` of the text is held out.

    An epoch visits windows whose starts lie `stride` characters apart, from a random offset, in a
    random order; both depend only on the seed and the epoch, so every run with the same seed sees
    the same batches in the same order, whatever model it trains.
    """

    def __init__(self, text: str, block_size: int, val_fraction: float = 0.1, stride: int | None = None,
                 source: str = "the text", longer: str = LONGER):
        if "\x00" in text:
            raise UserError(f"{source} contains NUL bytes: it looks like a binary file, not text")
        if not text:  # a copy cut short, a file made and not filled
            raise UserError(f"{source} is empty; {'give it some text' if longer == LONGER else longer}")
        if len(set(text[:2**16])) == 1 and len(set(text)) == 1:  # every next character is known: the loss falls to 0
            raise UserError(f"{source} holds a single character ({text[0]!r}), repeated: there is nothing to predict; "
                            "give it a text")
        self.block_size = block_size
        self.source = source  # what the text is, as a run's opening lines say: "data.path X (its first N lines, ...)"
        self.longer = longer  # what lengthens it: "raise data.max_lines" for a text cut short
        self.stride = stride or block_size
        self.fingerprint = sha256(text)  # a resumed run must train on the same text
        self.vocab = Vocab.of(text)
        tokens = self.vocab.encode(text, torch.uint8 if self.vocab_size <= 256 else torch.int32)
        n_val = int(len(tokens) * val_fraction)
        self.train, self.val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
        need = block_size + 1
        if len(self.train) < need:
            # `longer`: what lengthens the text (a corpus's file cut short is rebuilt, not lengthened)
            fix = "lower data.val_fraction" if len(tokens) >= need else longer
            raise UserError(
                f"{source} has {counted(len(self.train), 'training character')}, fewer than one block "
                f"(model.block_size + 1 = {need:,}); {fix} or use a smaller model.block_size"
            )
        if val_fraction and len(self.val) < need:  # 0 characters too: a split asked for is never dropped silently
            raise UserError(
                f"{source}'s validation split has {counted(len(self.val), 'character')}, fewer than one block "
                f"({need:,}); {'' if longer == LONGER else longer + ', '}raise data.val_fraction, lower "
                f"model.block_size, or set data.val_fraction: 0"
            )

    def describe(self) -> str:
        """"62 characters, 241,457 training and 26,828 validation tokens of data.path X (its first 10,000
        lines, data.max_lines)": what a run trains on, as its log, its summary and an ablation say it."""
        return (f"{self.vocab_size} characters, {len(self.train):,} training and {len(self.val):,} validation tokens "
                f"of {self.source}")

    def __repr__(self) -> str:
        return f"<CharDataset: {self.describe()}>"

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def itos(self) -> list[str]:
        return self.vocab.itos

    @property
    def stoi(self) -> dict[str, int]:
        return self.vocab.stoi

    def to(self, device) -> "CharDataset":
        self.train, self.val = self.train.to(device), self.val.to(device)
        return self

    # --- training windows -------------------------------------------------------------------
    @property
    def windows_per_epoch(self) -> int:
        return max(1, (len(self.train) - self.block_size) // self.stride)

    def steps_per_epoch(self, batch_size: int) -> int:
        return self.windows_per_epoch // batch_size

    def check_batch_size(self, batch_size: int) -> None:
        if self.steps_per_epoch(batch_size) == 0:
            held_out = f", or data.val_fraction (it holds out {len(self.val):,} of the text's characters)" \
                if len(self.val) > len(self.train) else ""
            windows = counted(self.windows_per_epoch, "training window")
            raise UserError(f"train.batch_size {batch_size} is larger than the {windows} per epoch; lower "
                            f"train.batch_size or data.stride{held_out}, or {self.longer}")

    def check_run(self, batch_size: int, prompt: str | None) -> None:
        """What a run checks of its data before it trains, not after hours of it: the batch fits the text,
        and the sample prompt's characters (None: nothing is sampled) are in the vocabulary."""
        self.check_batch_size(batch_size)
        if prompt is None:
            return
        try:
            self.vocab.encode(prompt)
        except UserError as e:  # data.path named: an override of it (another text) is then named as the cause
            empty = 'sample.prompt=""'
            fix = f"--set {quote(empty)}" if on_command_line() else f"overrides=[{empty!r}]"
            raise UserError(f"sample.prompt {prompt!r}: {e} ({self.source}); change sample.prompt to characters of "
                            f"that text, or leave it empty: {fix}") from None

    def epoch_starts(self, seed: int, epoch: int) -> torch.Tensor:
        """(windows_per_epoch,) shuffled window starts of one epoch, a function of (seed, epoch) only."""
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
        n, room = self.windows_per_epoch, len(self.train) - self.block_size
        offset = int(torch.randint(min(self.stride, room - (n - 1) * self.stride), (1,), generator=g, device="cpu"))
        dtype = torch.int32 if len(self.train) < 2**31 else torch.int64  # half the memory of a long per window
        # On the CPU, as `g`, whatever torch.set_default_device says: a CPU generator cannot draw a CUDA tensor.
        order = torch.randperm(n, generator=g, dtype=dtype, device="cpu").mul_(self.stride).add_(offset)
        return order.to(self.train.device)

    def batch(self, starts: torch.Tensor, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets, each (len(starts), block_size) int64."""
        data = self.train if split == "train" else self.val
        offsets = torch.arange(self.block_size + 1, device=data.device)
        chunk = data[starts[:, None] + offsets].long()  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def eval_starts(self, max_windows: int | None = None) -> torch.Tensor:
        """Fixed, non-overlapping validation windows, evenly thinned to at most `max_windows`."""
        room = max(len(self.val) - self.block_size, 0)  # none without a validation split
        starts = torch.arange(0, room, self.block_size, device=self.val.device)
        if max_windows is not None and len(starts) > max_windows:
            starts = starts[torch.linspace(0, len(starts) - 1, max_windows).round().long()]
        return starts


def sha256(text: str, piece: int = 1 << 20) -> str:
    """The hex SHA-256 of `text` in UTF-8, encoded a piece at a time (no second copy of a big text)."""
    h = hashlib.sha256()
    for i in range(0, len(text), piece):
        h.update(text[i : i + piece].encode("utf-8"))
    return h.hexdigest()


def corpus_text(spec) -> str:
    """The text of the corpus component `spec` (a ComponentSpec); anything but a str is its bug."""
    with spec.blamed("text()"):
        text = spec.build().text()
    if not isinstance(text, str):
        raise spec.error(f"text() returned {type(text).__name__}; it must return the corpus as a str")
    if not text:  # written, it would be the file every later run trains on
        raise spec.error("text() returned an empty str; it must return the corpus's text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate, from bytes decoded with errors="surrogateescape"
        raise spec.error(f"text() returned a str that is not valid Unicode ({e.reason} at index {e.start:,}); "
                         "decode its bytes with errors='replace', or fix them") from None
    return text


def will_create(data) -> bool:
    """Whether `load_dataset(data, ...)` would first create data.path from data.corpus (on first use)."""
    return data.corpus is not None and not exists(Path(data.path))


def exists(path: Path) -> bool:
    """Whether `path` exists, or a UserError naming data.path where the question has no answer."""
    try:
        return path.exists()
    except OSError as e:  # a name too long for the file system
        raise UserError(f"data.path {path}: {e.strerror}; choose another data.path") from None


def remove_stale_temporaries(path: Path, age: float = 60.0) -> None:
    """The temporary files of an earlier creation of `path` that was killed midway: older than `age`
    seconds, so that another process creating the same file now keeps its own."""
    for leftover in temporaries(path.parent, path.name):
        with contextlib.suppress(OSError):
            if time.time() - leftover.stat().st_mtime > age:
                leftover.unlink()


def not_found_hint() -> str:
    """Said after a data.path "not found": where a path written relative was looked for, and what to do."""
    return (" (paths in a recipe file are relative to its folder, on the command line to the current folder); put "
            f"the text there, or point data.path at it, e.g. {overrides_example('data.path=FILE')}")


def load_dataset(data, block_size: int, if_missing: str | None = None,
                 check: Callable[[CharDataset], None] = lambda dataset: None) -> CharDataset:
    """The dataset a recipe's `data` section describes, creating the corpus file on first use; `if_missing`
    (default: not_found_hint()) follows the error for a data.path not found. `check(dataset)` may refuse
    it: a corpus file made for a run that is then refused (a batch too large for the text) is removed."""
    if_missing = not_found_hint() if if_missing is None else if_missing
    path: Path = data.path
    if data.corpus is not None:  # a creation killed midway left its temporary file, even if a later one finished
        remove_stale_temporaries(path)
    created = will_create(data)
    made = create(path, data.corpus) if created else []
    try:
        if not exists(path):
            why = missing(path)  # a symbolic link loop exists() takes for no file at all
            raise UserError(f"data.path: file {path} {why}{if_missing if why == 'not found' else ''}")
        text = read_text(path, "data.path")
        # A corpus's file cut short (a full disk, a copy) is made again, not lengthened.
        longer = (f"delete it to rebuild it from the '{data.corpus.name}' corpus" if data.corpus and not created
                  else None)
        dataset = dataset_of(text, data, block_size, f"data.path {path}", longer)
        check(dataset)
    except UserError:
        if created:
            path.unlink(missing_ok=True)
            remove_empty(made)
        raise
    if created:
        lines = text.count("\n") + (text[-1:] not in ("", "\n"))  # a last line without its newline counts too
        print(f"Created {path} ({lines:,} line{'s' if lines != 1 else ''}) from the '{data.corpus.name}' corpus.",
              file=sys.stderr)
    return dataset


def dataset_of(text: str, data, block_size: int, source: str, longer: str | None = None) -> CharDataset:
    """The dataset of `text` as the `data` section cuts and splits it; errors name it as `source`, and
    say to `longer` (default: use a longer text) where it is too short."""
    if data.max_lines is not None:  # lines end at "\n" only, as for head -n (splitlines ends them at \f too)
        lines = text.split("\n", min(data.max_lines, len(text)))  # a bound str.split can take
        # Cut where text follows the last line kept (a file of exactly max_lines lines is whole): what is
        # too short may then be the cut, not the file.
        if len(lines) > data.max_lines and lines[-1]:
            text = "\n".join(lines[: data.max_lines]) + "\n"
            source += f" (its first {data.max_lines:,} line{'s' if data.max_lines > 1 else ''}, data.max_lines)"
            longer = "raise data.max_lines"
    return CharDataset(text, block_size, data.val_fraction, data.stride, source=source,
                       longer=longer or LONGER)


def cannot_create(path: Path, corpus, why: str, fix: str = "choose a writable data.path") -> UserError:
    """The error for a corpus file that cannot be written at `path`, `why`, and what to do."""
    return UserError(f"data.path: cannot create {path} from the '{corpus.name}' corpus: {why}; {fix}, e.g. "
                     f"{overrides_example('data.path=FILE', f'data.corpus={corpus.name}')}")


def create(path: Path, corpus) -> list[Path]:
    """Write the text of `corpus` (a ComponentSpec) to `path`, or say what to do instead; the folders made
    for it (data/ may not exist yet), as make_folders returns them. Another path on the command line must
    name the corpus again: alone, it is the user's own text (see apply_overrides)."""
    text = corpus_text(corpus)
    made = []
    try:
        made = make_folders(path.parent)
        write_text(path, text)
    except OSError as e:
        remove_empty(made)
        if e.errno in DISK_FULL:
            raise cannot_create(path, corpus, e.strerror, "free some space, or create it on another disk") from None
        raise cannot_create(path, corpus, cannot_make_folder(path.parent) or e.strerror) from None
    return made
