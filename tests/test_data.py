import errno
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

from gptkit.data.dataset import CharDataset
from gptkit.data.vocab import ENCODE_SLICE, Vocab
from gptkit.errors import UserError
from gptkit.data.shakespeare import markdown_to_plain
from gptkit.recipe.components import parse_component
from gptkit.registry import registry
from conftest import make_text


def test_vocab_and_round_trip():
    ds = CharDataset(make_text(), block_size=16)
    text = "KING:\nGood night."
    assert ds.vocab.decode(ds.vocab.encode(text).tolist()) == text
    assert ds.itos == sorted(ds.itos) and ds.stoi[ds.itos[3]] == 3


def test_long_texts_encode_slice_by_slice_and_name_every_unknown_character():
    text = ("héllo wörld 😀\n" * 5000)[: 3 * ENCODE_SLICE + 7]  # several slices, characters outside the BMP
    vocab = Vocab.of(text)
    ids = vocab.encode(text, torch.uint8)
    assert ids.dtype == torch.uint8 and vocab.decode(ids.tolist()) == text
    assert torch.equal(vocab.encode(text), ids.long())
    unknown = "x" + "h" * ENCODE_SLICE + "Ω"  # one in the first slice, one in the second
    with pytest.raises(UserError, match=r"characters not in the vocabulary: 'x', 'Ω'"):
        vocab.encode(unknown)


def test_split_and_windows():
    text = make_text()
    ds = CharDataset(text, block_size=16, val_fraction=0.1, stride=4)
    assert len(ds.train) + len(ds.val) == len(text) and len(ds.val) == int(len(text) * 0.1)
    starts = ds.epoch_starts(seed=0, epoch=0)
    assert len(starts) == ds.windows_per_epoch == (len(ds.train) - 16) // 4
    assert len(set(starts.tolist())) == len(starts) and int(starts.max()) + 17 <= len(ds.train)
    assert len({int(s) % 4 for s in starts}) == 1  # one random offset, then every 4th char
    x, y = ds.batch(starts[:5])
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_batch_order_depends_only_on_seed_and_epoch():
    ds = CharDataset(make_text(), block_size=16)
    assert torch.equal(ds.epoch_starts(1, 2), ds.epoch_starts(1, 2))
    assert not torch.equal(ds.epoch_starts(1, 2), ds.epoch_starts(1, 3))
    assert not torch.equal(ds.epoch_starts(1, 2), ds.epoch_starts(2, 2))


def test_memory_is_proportional_to_the_text():
    text = make_text(3000)
    ds = CharDataset(text, block_size=64, stride=1)
    assert ds.train.element_size() == 1  # one byte per character for small vocabularies
    assert ds.train.numel() + ds.val.numel() == len(text)


def test_eval_windows_are_fixed_and_non_overlapping():
    ds = CharDataset(make_text(), block_size=16)
    starts = ds.eval_starts()
    assert torch.all(starts[1:] - starts[:-1] == 16)
    assert len(ds.eval_starts(3)) == 3 and torch.equal(ds.eval_starts(3), ds.eval_starts(3))


def test_eval_windows_are_thinned_evenly_across_the_whole_split():
    ds = CharDataset(make_text(), block_size=16)
    every = ds.eval_starts().tolist()
    for n in (2, 5, 7):
        kept = ds.eval_starts(n).tolist()
        assert len(kept) == n and kept[0] == every[0] and kept[-1] == every[-1]  # from the first window to the last
        gaps = [(b - a) // 16 for a, b in zip(kept, kept[1:])]  # in windows
        even = (len(every) - 1) / (n - 1)
        assert all(math.floor(even) <= g <= math.ceil(even) for g in gaps), gaps
    assert ds.eval_starts(len(every) + 5).tolist() == every  # fewer than asked for: all of them


def test_markdown_to_plain():
    md = ("# Coriolanus\n\n## ACT I\n\n### SCENE I. Rome. A street.\n\n_Enter a company of mutinous Citizens, with\n"
          "staves_\n\n**First Citizen**  \nBefore we proceed any further, hear me speak.  \nSecond line.\n\n"
          "**All**  \nSpeak, speak.\n\n__\\[Aside]_  \nSoft\\--now.\n")
    assert markdown_to_plain(md) == (
        "Enter a company of mutinous Citizens, with\nstaves\n\nFirst Citizen:\n"
        "Before we proceed any further, hear me speak.\nSecond line.\n\nAll:\nSpeak, speak.\n\n[Aside]\nSoft--now.\n"
    )


def test_shakespeare_corpus_starts_with_coriolanus():
    from gptkit.data.shakespeare import build_text

    text = build_text()
    assert "\nFirst Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" in text[:400]
    assert text.count("\n") > 100_000 and "ROMEO:" in text and "**" not in text and "_" not in text


@pytest.mark.parametrize("name", registry("corpus").names())
def test_every_corpus_builds_a_play_text(name):
    text = parse_component("corpus", name).build().text()
    assert isinstance(text, str) and text.strip()
    assert re.search(r"^\S[^\n]*:\n\S", text, re.M), "no `SPEAKER:` line followed by a speech"


def test_max_lines_counts_newlines_only_and_a_byte_order_mark_is_not_text(tmp_path):
    from types import SimpleNamespace

    from gptkit.data.dataset import load_dataset

    path = tmp_path / "t.txt"
    lines = ["line 0", "line 1\f", "line \u2028 2", "line 3", "line 4", "line 5"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    data = SimpleNamespace(path=path, corpus=None, max_lines=4, val_fraction=0.0, stride=1)
    ds = load_dataset(data, block_size=4)
    assert ds.vocab.decode(ds.train.tolist()) == "\n".join(lines[:4]) + "\n"  # as head -n 4 has it
    assert "\ufeff" not in ds.itos


@pytest.mark.parametrize("text, cut", [("a\nb\nc\nd\n", False), ("a\nb\nc\nd", False), ("a\nb\nc\nd\ne\n", True)],
                         ids=["4-lines", "4-lines-no-last-newline", "5-lines"])
def test_max_lines_cuts_only_a_file_with_more_lines(tmp_path, text, cut):
    """A file of exactly max_lines lines is all read: too short, it is the file that is, and raising
    data.max_lines would not help."""
    from types import SimpleNamespace

    from gptkit.data.dataset import load_dataset

    path = tmp_path / "t.txt"
    path.write_text(text)
    data = SimpleNamespace(path=path, corpus=None, max_lines=4, val_fraction=0.0, stride=1)
    first_lines = f"data.path {path} (its first 4 lines, data.max_lines)"
    assert load_dataset(data, block_size=2).source == (first_lines if cut else f"data.path {path}")
    with pytest.raises(UserError) as e:
        load_dataset(data, block_size=99)
    assert str(e.value).startswith(first_lines if cut else f"data.path {path} has ")
    assert ("raise data.max_lines" if cut else "use a longer text") in str(e.value)


def test_byte_order_marks_inside_a_text_joined_by_cat_are_dropped_too(tmp_path):
    from gptkit.io import read_text

    path = tmp_path / "t.txt"
    path.write_bytes("\ufeffab\r\n".encode() + "\ufeffcd\n".encode())  # two files of Windows' Notepad, joined
    assert read_text(path, "data.path") == "ab\ncd\n"


def test_a_text_too_large_for_memory_is_one_error_naming_it(tmp_path, monkeypatch):
    from gptkit.io import read_text

    path = tmp_path / "huge.txt"
    path.write_text("abc\n")

    def no_memory(self, *args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(Path, "read_text", no_memory)
    with pytest.raises(UserError, match=rf"^data.path file {re.escape(str(path))} \(4 bytes\) is too large for this "
                                        r"machine's memory; train on a part of it \(head -n 1000000 FILE > part.txt, "
                                        r"say\)$"):
        read_text(path, "data.path")


def test_undecodable_bytes_of_an_argument_are_unknown_characters():
    with pytest.raises(UserError, match="not in the vocabulary"):
        Vocab.of("ab").encode("a\udcffb")  # how Python passes b"a\xffb" from the command line


def test_a_corpus_that_cannot_be_written_names_data_path(tmp_path, write_recipe, cli):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "shakespeare.txt"  # under a file: no folder can be made there
    result = cli("validate", write_recipe(), "--set", f"data.path={target}", "--set", "data.corpus=shakespeare")
    assert result.exit_code == 2 and f"cannot create {target}" in result.output  # said before a run, building nothing
    result = cli("run", write_recipe(), "--set", f"data.path={target}", "--set", "data.corpus=shakespeare",
                 "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"data.path: cannot create {target} from the 'shakespeare' corpus: " in result.output
    assert "choose a writable data.path, e.g. --set data.path=FILE --set data.corpus=shakespeare" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_full_disk_while_creating_a_corpus_says_to_free_space_and_leaves_no_folder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from gptkit import io
    from gptkit.data.dataset import load_dataset

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.os, "fsync", disk_full)
    data = SimpleNamespace(path=tmp_path / "data" / "new" / "s.txt", corpus=parse_component("corpus", "shakespeare"),
                           max_lines=None, val_fraction=0.1, stride=None)
    with pytest.raises(UserError) as e:
        load_dataset(data, block_size=8)
    assert str(e.value) == (f"data.path: cannot create {data.path} from the 'shakespeare' corpus: No space left on "
                            "device; free some space, or create it on another disk, e.g. "
                            "overrides=['data.path=FILE', 'data.corpus=shakespeare']")
    assert list(tmp_path.iterdir()) == []  # the folders made for it are gone too


def test_a_corpus_file_cut_short_is_to_be_deleted_and_rebuilt(tmp_path):
    from types import SimpleNamespace

    from gptkit.data.dataset import load_dataset

    (tmp_path / "s.txt").write_text("")  # a creation on a full disk, a copy cut short
    data = SimpleNamespace(path=tmp_path / "s.txt", corpus=parse_component("corpus", "shakespeare"), max_lines=None,
                           val_fraction=0.1, stride=None)
    with pytest.raises(UserError, match=r" is empty; delete it to rebuild it from the 'shakespeare' corpus$"):
        load_dataset(data, block_size=8)


def test_creating_a_corpus_removes_what_a_killed_creation_left_but_not_a_creation_under_way(tmp_path):
    from types import SimpleNamespace

    from gptkit.data.dataset import load_dataset

    path = tmp_path / "shakespeare.txt"
    stale, fresh = (tmp_path / f".shakespeare.txt.{n}.tmp" for n in ("killed", "writing"))
    for leftover in (stale, fresh):
        leftover.write_text("half a play")
    os.utime(stale, (time.time() - 3600,) * 2)
    data = SimpleNamespace(path=path, corpus=parse_component("corpus", "shakespeare"), max_lines=40, val_fraction=0.0,
                           stride=1)
    load_dataset(data, block_size=4)
    assert path.exists() and not stale.exists() and fresh.exists()
    stale.write_text("half a play")  # killed while another process created it: it is left once the corpus exists
    os.utime(stale, (time.time() - 3600,) * 2)
    load_dataset(data, block_size=4)
    assert not stale.exists() and fresh.exists()


def test_a_corpus_under_a_file_says_that_file_is_no_folder(tmp_path):
    from types import SimpleNamespace

    from gptkit.data.dataset import load_dataset
    from gptkit.recipe.components import ComponentSpec

    (tmp_path / "notes.txt").write_text("x")
    data = SimpleNamespace(path=tmp_path / "notes.txt" / "corpus.txt", corpus=ComponentSpec(kind="corpus", name="shakespeare", params={}),
                           max_lines=None, val_fraction=0.1, stride=None)
    with pytest.raises(UserError, match=f"cannot create .* corpus: {tmp_path / 'notes.txt'} is a file, not a folder"):
        load_dataset(data, block_size=8)


@pytest.mark.parametrize("text, lines", [("KING:\nhail\n", 2), ("KING:\nhail", 2), ("xyz", 1)])
def test_creating_a_corpus_counts_a_last_line_without_its_newline(tmp_path, monkeypatch, capsys, text, lines):
    from types import SimpleNamespace

    from gptkit.data import dataset

    monkeypatch.setattr(dataset, "corpus_text", lambda corpus: text)
    data = SimpleNamespace(path=tmp_path / "c.txt", corpus=parse_component("corpus", "shakespeare"), max_lines=None,
                           val_fraction=0.0, stride=1)
    dataset.load_dataset(data, block_size=1)
    assert f"Created {data.path} ({lines} line{'s' if lines > 1 else ''}) from" in capsys.readouterr().err


@pytest.mark.parametrize("args", [("--resume", "runs/typo"), ("--runs-dir", "afile"), ("--set", "sample.prompt=€"),
                                  ("--set", "train.batch_size=100000")], ids=["resume", "runs-dir", "prompt", "batch"])
def test_a_run_refused_before_it_starts_leaves_no_corpus_file(cli, tmp_path, monkeypatch, write_recipe, args):
    """The corpus is made on first use: not by a command that is then refused, which would say it made a file
    before its error."""
    from gptkit.data import dataset

    monkeypatch.setattr(dataset, "corpus_text", lambda corpus: make_text())
    (tmp_path / "afile").write_text("")
    recipe = write_recipe(data={"path": "data/corpus.txt", "corpus": "shakespeare"})
    result = cli("run", recipe, *args, "-q")
    assert result.exit_code == 2 and result.output.startswith("error: ") and "Created" not in result.output, \
        result.output
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
    assert cli("run", recipe, "--set", "train.max_steps=1", "-q").exit_code == 0 and (tmp_path / "data/corpus.txt").exists()


def test_an_epochs_order_is_drawn_on_the_cpu_whatever_the_default_device():
    """A notebook's torch.set_default_device("cuda") must not meet the CPU generator's draws (meta stands in)."""
    ds = CharDataset(make_text(), block_size=16)
    with torch.device("meta"):
        starts = ds.epoch_starts(seed=3, epoch=1)
    assert torch.equal(starts, ds.epoch_starts(seed=3, epoch=1))


def test_a_batch_that_does_not_fit_names_a_validation_split_larger_than_the_training_text():
    text = "KING: hail to thee, and to thy house.\n" * 10  # 380 characters
    with pytest.raises(UserError, match=r"larger than the 1 training window per epoch; lower train.batch_size or "
                                        r"data.stride, or data.val_fraction \(it holds out 342 of the text's "
                                        r"characters\), or use a longer text$"):
        CharDataset(text, block_size=16, val_fraction=0.9).check_batch_size(4)
    with pytest.raises(UserError, match=r"stride, or use a longer text$"):  # a training text just too short
        CharDataset(text, block_size=16, val_fraction=0.1).check_batch_size(100)


@pytest.mark.parametrize("text", ["\n" * 5000, "a"])
def test_a_text_of_one_character_repeated_is_refused(text):
    with pytest.raises(UserError, match=f"^the text holds a single character \\({re.escape(repr(text[0]))}\\), repeated: "
                                        "there is nothing to predict; give it a text$"):
        CharDataset(text, block_size=8)


@pytest.mark.parametrize("ids", [[-1], [3], [0, 99]])
def test_decoding_an_id_outside_the_vocabulary_names_the_range(ids):
    with pytest.raises(ValueError, match=r"^id -?\d+ is outside the vocabulary \(ids 0 to 2\)$"):
        Vocab.of("abc").decode(ids)
    assert Vocab.of("abc").decode(torch.tensor([2, 0])) == "ca"


def test_a_text_cut_by_max_lines_is_told_to_keep_more_lines(write_recipe, cli, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("a short first line\n" + "and a much longer second line of text, " * 20 + "\n", encoding="utf-8")
    result = cli("validate", write_recipe(data={"path": str(text), "max_lines": 1, "val_fraction": 0.5},
                                          model={"block_size": 9}))
    assert result.exit_code == 2 and "(its first 1 line, data.max_lines)'s validation split has 9 characters, fewer " \
        "than one block (10); raise data.max_lines, raise data.val_fraction" in result.output, result.output
    result = cli("validate", write_recipe(data={"path": str(text), "max_lines": 1, "val_fraction": 0},
                                          model={"block_size": 8}))
    assert result.exit_code == 2 and result.output.rstrip().endswith(
        "lower train.batch_size or data.stride, or raise data.max_lines"), result.output
