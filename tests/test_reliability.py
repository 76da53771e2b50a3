"""Interruptions lose at most the work since the last checkpoint, and a resumed run is the run that
would have happened: the same per-step losses and final weights, bit for bit (CPU, same threads)."""

import contextlib
import errno
import io
import json
import math
import re
import os
import signal
import struct
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from gptkit import GptkitWarning, load_recipe, train
from gptkit.errors import CheckpointError, Diverged, Interrupted, UserError
from gptkit.registry import registry
from gptkit.training.checkpoint import load_checkpoint
from gptkit.training.folder import val_curve
from gptkit.training.resume import recipe_changes
from gptkit.training.trainer import Trainer
from conftest import breaks_after, make_text, stop_at, tiny_recipe


def recipe_diff(old: dict, new: dict) -> list[str]:
    """'key: old -> new' for every key whose value differs and that may not change, as a refusal lists them."""
    return [how for _, how in recipe_changes(old, new)]

RELIABLE = {"model": {"dropout": 0.1}, "train": {"max_steps": 12, "checkpoint_every": 3, "eval_every": 4, "log_every": 5}}


def losses(run: Path) -> list:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]


def weights(run: Path) -> dict:
    return load_checkpoint(run)["model"]


def assert_same_run(a: Path, b: Path):
    assert losses(a) == losses(b)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    assert sb["status"] == "finished"
    figures = ("final_train_loss", "final_val_loss", "best_val_loss", "steps", "tokens")
    assert {k: sa[k] for k in figures} == {k: sb[k] for k in figures}


def interrupted_at(monkeypatch, path: Path, runs: Path, step: int, overrides=()) -> Path:
    """The run folder of `path` trained in `runs` until a stop, as a signal's, after step `step`."""
    with monkeypatch.context() as m:
        stop_at(m, "train_step", step)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path, list(overrides)), runs_dir=runs, quiet=True)
    return e.value.run_dir


@pytest.fixture
def reference(tmp_path, write_recipe):
    path = write_recipe(**RELIABLE)
    return path, train(load_recipe(path), runs_dir=tmp_path / "reference", quiet=True).run_dir


@pytest.mark.parametrize("method,step", [("train_step", 5), ("evaluate", 8)], ids=["mid-epoch", "after-eval"])
def test_stop_and_resume_is_bitwise_identical(tmp_path, monkeypatch, reference, method, step):
    path, ref = reference
    with monkeypatch.context() as m:
        stop_at(m, method, step)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    assert e.value.exit_code == 143
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run)["step"] == step
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert_same_run(ref, run)


def test_resuming_with_other_gptkit_code_says_so(tmp_path, monkeypatch, write_recipe):
    from gptkit.plugins import software

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["software"] == software()
    torch.save({**state, "software": {**software(), "torch": "2.4.0"}}, run / "checkpoint.pt")
    with pytest.warns(GptkitWarning, match=rf"^{re.escape(str(run))} was trained with torch 2.4.0, now "
                                           rf"{re.escape(software()['torch'])}; resuming it with the new$"):
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)


def test_a_run_resumed_with_other_software_keeps_its_earlier_sessions_and_is_not_pooled(tmp_path, monkeypatch,
                                                                                        write_recipe):
    from gptkit.ablation.runner import Refused, check_same_software
    from gptkit.plugins import software

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    old = {**software(), "gptkit_sha256": "0123456789ab"}  # its first session, before a git pull
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "software": old}))
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["software"] == software() and summary["software_history"] == [old]
    with pytest.raises(Refused, match="gptkit code sha256 0123456789ab, now"):
        check_same_software(run)  # an ablation does not take it for a run of today's code alone


def test_resume_auto_that_loses_its_run_to_another_process_chooses_again(tmp_path, monkeypatch, write_recipe):
    """Two `--resume auto` started at once choose the same run; the one that locks it second passes it by."""
    import fcntl

    from gptkit.training import run as run_module

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    choose, held = run_module.find_resumable, []

    def chosen_then_taken(*args, **kwargs):  # the other process locks the run just after this one chose it
        found = choose(*args, **kwargs)
        if found and not held:
            held.append(open(found[0] / ".lock", "a"))
            fcntl.flock(held[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
        return found

    monkeypatch.setattr(run_module, "find_resumable", chosen_then_taken)
    try:
        result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    finally:
        held[0].close()
    assert result.run_dir != run and result.summary["status"] == "finished"  # a new run, not an error
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"  # left to its process


@pytest.mark.parametrize("resume", ["run", "auto"])
def test_a_resume_whose_run_another_process_trained_meanwhile_does_not_train_it_again(tmp_path, monkeypatch,
                                                                                       write_recipe, resume):
    """Two resumes started at once both read the checkpoint before either locks the run: the one that
    locks it second, after the first has finished it, must not train again from the stale checkpoint and
    write over the finished run."""
    from gptkit.training import run as run_module

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    other = []

    def overtaken(*args) -> None:  # the other process resumes and finishes the run, once, meanwhile
        if not other:
            other.append(None)
            other[0] = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)

    lock = run_module.lock_run

    @contextlib.contextmanager
    def locked_after_the_other(run_dir):  # after this one read the checkpoint (auto, while choosing the run)
        overtaken()
        with lock(run_dir):
            yield

    monkeypatch.setattr(run_module, "lock_run", locked_after_the_other)
    if resume == "auto":  # it chooses again, passing the finished run by
        result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
        assert result.run_dir != run and result.summary["status"] == "finished"
    else:
        with pytest.raises(UserError, match="was trained by another process while this one made ready to resume"):
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    finished = json.loads((run / "summary.json").read_text())
    assert finished == other[0].summary and finished["status"] == "finished"
    assert load_checkpoint(run)["step"] == 6


def test_a_damaged_line_of_metrics_is_dropped_alone_when_resuming(tmp_path, monkeypatch, reference):
    path, ref = reference
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 5)
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join([lines[0], "GARBAGE{\n", *lines[2:]]))  # step 2's record damaged by hand
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert losses(run) == [r for r in losses(ref) if r[0] != 2]  # steps 3 to 5 kept, not dropped with it


def test_a_stop_between_log_lines_leaves_the_final_figures_as_they_would_have_been(tmp_path, write_recipe,
                                                                                   monkeypatch):
    path = write_recipe(train={"max_steps": 8, "log_every": 4})
    ref = train(load_recipe(path), runs_dir=tmp_path / "reference", quiet=True).run_dir
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 5)
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert_same_run(ref, run)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("at", ["sample", "write_text"])  # the sample drawn, or being written to samples.txt
def test_a_signal_while_sampling_stops_the_sample_not_the_finished_run(tmp_path, write_recipe, monkeypatch, sig, at):
    import gptkit.training.run

    real = getattr(gptkit.training.run, at)

    def signalled(*args, **kwargs):
        if at == "write_text" and args[0].name != "samples.txt":
            return real(*args, **kwargs)
        if at == "sample":  # some characters made, then the signal
            kwargs["on_text"]("ROMEO:")
            kwargs["on_text"]("abc")
        os.kill(os.getpid(), sig)  # a real signal, handled as the process would handle it
        time.sleep(5 if at == "sample" else 0)  # (one held while samples.txt is written comes after it)
        return real(*args, **kwargs) if at == "write_text" else None

    path = write_recipe(sample={"prompt": "ROMEO:", "tokens": 50})
    with monkeypatch.context() as m:
        m.setattr(gptkit.training.run, at, signalled)
        with pytest.raises(Interrupted, match="received while sampling, after training finished: the run is finished "
                                              "and saved, its sample ") as e:
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    assert e.value.exit_code == 128 + sig and not e.value.resumable
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6 and not summary["resumable"]
    if at == "sample":
        assert "cut short at 3 of 50 characters, in samples.txt" in str(e.value)
        said = f"model, _, vocab = load_model({str(run)!r}); sample(model, vocab, prompt, tokens) makes more"
        assert str(e.value).endswith(said)  # from Python, as it would be run
        from gptkit import load_model, sample
        model, _, vocab = load_model(run)
        assert sample(model, vocab, "ROMEO:", 3).startswith("ROMEO:")
        assert (run / "samples.txt").read_text() == "ROMEO:abc"
    else:
        assert len((run / "samples.txt").read_text()) == len("ROMEO:") + 50  # whole, and written
        assert "its sample in samples.txt" in str(e.value)


def test_a_sample_cut_short_and_not_written_says_so(tmp_path, write_recipe, monkeypatch):
    import errno

    import gptkit.training.run

    def signalled(*args, on_text, **kwargs):
        on_text("ROMEO:")
        on_text("abc")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    real = gptkit.training.run.write_text

    def full(path, text):
        if path.name != "samples.txt":
            return real(path, text)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(gptkit.training.run, "sample", signalled)
    monkeypatch.setattr(gptkit.training.run, "write_text", full)
    with pytest.warns(GptkitWarning, match="could not write samples.txt"), \
            pytest.raises(Interrupted, match="its sample cut short at 3 of 50 characters, not saved; ") as e:
        train(load_recipe(write_recipe(sample={"prompt": "ROMEO:", "tokens": 50})), runs_dir=tmp_path / "runs",
              quiet=True)
    assert not (e.value.run_dir / "samples.txt").exists()


def test_a_signal_anywhere_in_the_final_sample_leaves_the_run_finished(tmp_path, write_recipe, monkeypatch):
    """Even between the parts write_sample stops itself in (after sampling, before samples.txt is written)."""
    import gptkit.training.run

    def signalled(*args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)

    monkeypatch.setattr(gptkit.training.run, "write_sample", signalled)
    with pytest.raises(Interrupted, match=r"^SIGINT received while sampling, after training finished: the run is "
                                          r"finished and saved$") as e:
        train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True)
    summary = json.loads((e.value.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and not e.value.resumable and e.value.exit_code == 130


def test_run_files_are_as_readable_as_the_umask_allows(tmp_path, write_recipe):
    old = os.umask(0o022)
    try:
        run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    finally:
        os.umask(old)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in run.iterdir()} == {
        f.name: "0o644" for f in run.iterdir()}


def test_a_file_rewritten_keeps_its_mode_and_a_link_to_it_stays_a_link(tmp_path):
    from gptkit.io import write_text

    real, link = tmp_path / "real.txt", tmp_path / "link.txt"
    real.write_text("old")
    real.chmod(0o640)
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new" and oct(real.stat().st_mode & 0o777) == "0o640"
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(tmp_path / "gone" / "x.txt")  # (an unmounted drive): not replaced by a file
    with pytest.raises(OSError):
        write_text(dangling, "new")
    assert dangling.is_symlink()


def stop_during_the_evaluation_at_step_4(monkeypatch, path: Path, runs: Path) -> Interrupted:
    """Train until a Ctrl-C lands during the evaluation at step 4; its checkpoint has that evaluation to do."""
    original = Trainer.evaluate

    def interrupted_eval(self):
        if self.state.step == 4:
            self.stop_signal = signal.SIGINT
        return original(self)

    with monkeypatch.context() as m:
        m.setattr(Trainer, "evaluate", interrupted_eval)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path), runs_dir=runs, quiet=True)
    return e.value


def test_stop_during_evaluation_redoes_it_on_resume(tmp_path, monkeypatch, reference):
    path, ref = reference
    stopped = stop_during_the_evaluation_at_step_4(monkeypatch, path, tmp_path / "runs")
    assert stopped.exit_code == 130
    assert load_checkpoint(stopped.run_dir)["trainer"]["state"]["eval_pending"]
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    assert_same_run(ref, stopped.run_dir)


def test_a_stop_during_an_evaluation_at_a_save_step_saves_once(tmp_path, monkeypatch, write_recipe):
    from gptkit.training import run

    path = write_recipe(**{**RELIABLE, "train": {**RELIABLE["train"], "checkpoint_every": 4}})
    saves = []
    original = run.save_checkpoint
    monkeypatch.setattr(run, "save_checkpoint", lambda *args, **kwargs: saves.append(args[0]) or original(*args, **kwargs))
    stopped = stop_during_the_evaluation_at_step_4(monkeypatch, path, tmp_path / "runs")
    assert len(saves) == 1 and load_checkpoint(stopped.run_dir)["trainer"]["state"]["eval_pending"]


def test_a_run_that_fails_after_redoing_an_evaluation_resumes_without_repeating_its_record(
        tmp_path, monkeypatch, reference):
    path, ref = reference
    run = stop_during_the_evaluation_at_step_4(monkeypatch, path, tmp_path / "runs").run_dir

    def crash_at_step_5(self, *args):
        if self.state.step == 5:
            raise RuntimeError("the machine went away")
        return original_step(self, *args)

    original_step = Trainer.train_step
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", crash_at_step_5)
        with pytest.raises(RuntimeError):  # redoes the evaluation, then fails before any new checkpoint
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert [r for r in losses(run) if r[0] == 4 and r[2] is not None] != []
    train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)  # from step 4 again
    assert_same_run(ref, run)


def test_a_checkpoint_of_weights_only_is_not_resumed(tmp_path, monkeypatch, write_recipe, capsys):
    """A checkpoint.pt without the training state (written by hand, or train_model's save_path copied in): one
    error naming the run and what to do, and `--resume auto` passes it by saying why."""
    path = write_recipe()
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    del checkpoint["trainer"]
    torch.save(checkpoint, run / "checkpoint.pt")
    with pytest.raises(UserError) as e:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert str(e.value) == (f"cannot resume {run}: its checkpoint.pt holds weights only, no training state to resume "
                            f"from; sample it with gptkit sample {run}, or start a new run without resume")
    result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    assert result.run_dir != run
    assert (f"note: not resuming {run}: its checkpoint.pt holds weights only, no training state to resume from\n"
            in capsys.readouterr().err)


def test_resume_auto_starts_fresh_when_nothing_is_unfinished(tmp_path, write_recipe):
    path = write_recipe()
    first = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    second = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    assert first.run_dir != second.run_dir


def test_resume_refuses_a_changed_recipe(tmp_path, write_recipe, reference):
    path, ref = reference
    changed = load_recipe(path, ["model.n_embd=64", "train.lr=0.01", "train.max_steps=20"])
    with pytest.raises(UserError) as e:
        train(changed, runs_dir=tmp_path, quiet=True, resume=ref)
    msg = str(e.value)
    assert "the recipe changed in ways that matter" in msg
    assert "model.n_embd: 32 -> 64" in msg and "train.lr: 0.001 -> 0.01" in msg and "max_steps" not in msg


def test_resume_may_read_the_text_from_another_path():
    """--set data.path drops the recipe's corpus (it would write the corpus under the new name): the
    same text elsewhere is resumable; the dataset's fingerprint checks it is the same text."""
    old = {"data": {"path": "data/shakespeare.txt", "corpus": {"name": "shakespeare"}, "max_lines": 10}}
    moved = {"data": {"path": "/elsewhere/copy.txt", "corpus": None, "max_lines": 10}}
    assert recipe_diff(old, moved) == []
    assert recipe_diff(old, {"data": {**moved["data"], "max_lines": 20}}) == ["data.max_lines: 10 -> 20"]


def test_resume_may_cut_the_same_text_by_other_lines(tmp_path, write_recipe, corpus):
    """A file shortened to the lines the run read is the same text without data.max_lines; a cut that changes the
    text is said as the change it is, beside the text's."""
    path = write_recipe(data={"path": str(corpus), "max_lines": 40}, train={"max_steps": 2, "epochs": 50})
    run = train(load_recipe(path), runs_dir=tmp_path, quiet=True).run_dir
    short = tmp_path / "short.txt"
    short.write_text("".join(corpus.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    resumed = train(load_recipe(path, [f"data.path={short}", "data.max_lines=null", "train.max_steps=4"]),
                    runs_dir=tmp_path, quiet=True, resume=run)
    assert resumed.summary["steps"] == 4
    with pytest.raises(UserError) as e:
        train(load_recipe(path, ["data.max_lines=30", "train.max_steps=6"]), runs_dir=tmp_path, quiet=True, resume=run)
    assert "  data.max_lines: null -> 30\n  data: the text at " in str(e.value)  # (null: as the run went on)


def test_a_stride_of_one_block_is_no_change_from_the_default():
    old = {"data": {"path": "t.txt", "stride": None}, "model": {"block_size": 32}}
    assert recipe_diff(old, {"data": {"path": "t.txt", "stride": 32}, "model": {"block_size": 32}}) == []
    assert recipe_diff(old, {"data": {"path": "t.txt", "stride": 16}, "model": {"block_size": 32}}) == [
        "data.stride: 32 -> 16"]


def test_resume_auto_picks_only_runs_of_its_own_recipe(tmp_path, write_recipe, monkeypatch):
    monkeypatch.setattr(Trainer, "evaluate", lambda self: None)
    tiny, wide = write_recipe(name="tiny"), write_recipe(name="tiny-wide", model={"n_embd": 64})
    with monkeypatch.context() as m:
        stop_at(m, "train_step", 3)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(tiny), runs_dir=tmp_path / "runs", quiet=True)
        with pytest.raises(Interrupted):  # newer, and its name starts with "tiny-"
            train(load_recipe(wide), runs_dir=tmp_path / "runs", quiet=True)
    result = train(load_recipe(tiny), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    assert result.run_dir == e.value.run_dir and result.summary["status"] == "finished"


def test_resume_refuses_another_text_with_the_same_characters(tmp_path, reference, corpus):
    path, ref = reference
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join(reversed(lines)), encoding="utf-8")
    with pytest.raises(UserError, match=r"its text changed in ways that matter:\n  data: the text at .*corpus.txt is "
                                        r"not the one the run was trained on"):  # not "the recipe": it is as it was
        train(load_recipe(path, ["train.max_steps=15"]), runs_dir=tmp_path, quiet=True, resume=ref)


def test_resume_refuses_a_text_of_other_characters_naming_them(tmp_path, reference, corpus):
    path, ref = reference
    other = tmp_path / "other.txt"
    other.write_text(corpus.read_text(encoding="utf-8").replace("a", "Ω").replace("e", "ß"), encoding="utf-8")
    with pytest.raises(UserError) as e:
        train(load_recipe(path, [f"data.path={other}", "train.max_steps=15"]), runs_dir=tmp_path, quiet=True,
              resume=ref)
    n = len(set(corpus.read_text(encoding="utf-8")))
    assert str(e.value) == (f"cannot resume {ref}: its text changed in ways that matter:\n  data: the text at {other} "
                            f"is not the one the run was trained on (its vocabulary: {n} characters -> {n}, without "
                            f"'a', 'e', with 'ß', 'Ω')\nUndo these changes, or start a new run without resume.")


def test_the_resume_command_printed_after_a_stop_works_from_anywhere(tmp_path, corpus, monkeypatch, cli):
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "r.yaml"  # a path relative to the recipe, as the shipped recipes have
    recipe.write_text(f"name: r\ndata: {{path: ../{corpus.name}}}\nmodel: {{n_embd: 32, n_head: 4, n_layer: 1, "
                      "block_size: 16}\ntrain: {batch_size: 4, max_steps: 6, device: cpu}\n")
    monkeypatch.chdir(tmp_path / "recipes")
    with monkeypatch.context() as m:
        stop_at(m, "train_step", 3)
        with pytest.raises(Interrupted) as e:
            train(load_recipe("r.yaml"), runs_dir="runs", quiet=True)
    run = e.value.run_dir.absolute()
    monkeypatch.chdir(tmp_path)  # somewhere else
    result = cli("run", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    assert not (run / corpus.name).exists()


def test_a_longer_budget_may_resume(tmp_path, reference):
    path, ref = reference
    result = train(load_recipe(path, ["train.max_steps=15"]), runs_dir=tmp_path, quiet=True, resume=ref)
    assert result.summary["steps"] == 15 and result.run_dir == ref


@pytest.mark.parametrize("schedule, warned", [
    ({"name": "cosine", "warmup_steps": 0}, "stretched over 8 steps instead of the 4 this run trained toward: the "
     "learning rate goes from 0.0002 at step 4 to 0.0009 at step 5, and the run matches neither a run of 4 steps "
     "nor one of 8 (a new run follows one schedule throughout)"),
    ("constant", None),
    ({"name": "cosine", "warmup_steps": 6}, None),  # its 4 steps warmed up as an 8-step run's would
])
def test_a_new_budget_that_stretches_the_schedule_is_warned_of(tmp_path, write_recipe, cli, schedule, warned):
    path = write_recipe(train={"max_steps": 4, "lr": 0.002, "schedule": schedule})
    with warnings.catch_warnings():  # a warm-up of 6 in a 4-step run: warned of, as it should be
        warnings.simplefilter("ignore", GptkitWarning)
        run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    result = cli("run", "--resume", run, "--set", "train.max_steps=8")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Resuming {run} from step 4 of 8 (it trained toward 4 steps; the recipe now "
                                    "says 8)\n"), result.stdout
    assert ("warning: train.schedule" in result.output) == bool(warned), result.output
    if warned:
        assert f"warning: train.schedule (cosine) is now {warned}\n" in result.output


def test_a_recipe_given_again_without_the_runs_overrides_says_what_the_run_goes_on_with(tmp_path, write_recipe,
                                                                                       monkeypatch, cli, no_gpu):
    """The recipe file given with --resume (or auto) is not the run's own: settings the run was started with
    by --set, and that may change, revert; they are listed, but for the budget, which the opening line says,
    and those this machine resolves alike (no GPU: train.device auto is the CPU, and compile auto is off)."""
    path = write_recipe(train={"max_steps": 12, "log_every": 2, "eval_every": 4, "micro_batch_size": 4})
    alike = ["train.device=auto", "train.compile=false", "train.micro_batch_size=5"]  # 5: 4 rows, a divisor of 8
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3,
                         ["train.max_steps=6", "train.log_every=1", "sample.tokens=5", *alike])
    listed = (f"note: resuming {run} with settings other than those it trained with:\n"
              "  sample.tokens: 5 -> 20\n  train.log_every: 1 -> 2\n")
    result = cli("run", path, "--resume", run, "-q", "--runs-dir", run.parent)
    assert result.exit_code == 0, result.output
    assert listed in result.stderr and "max_steps" not in result.stderr, result.stderr
    again = interrupted_at(monkeypatch, path, tmp_path / "again", 3,
                           ["train.max_steps=6", "train.log_every=1", "sample.tokens=5", *alike])
    result = cli("run", path, "--resume", "auto", "--runs-dir", again.parent)  # the opening line says the budget
    assert result.exit_code == 0 and result.stderr.startswith(listed.replace(str(run), str(again))), result.output
    assert f"Resuming {again} from step 3 of 12 (it trained toward 6 steps; the recipe now says 12)" in result.stdout


def test_a_resumed_epoch_says_which_of_its_batches_its_time_is_of(tmp_path, write_recipe, monkeypatch, cli):
    run = interrupted_at(monkeypatch, write_recipe(), tmp_path / "runs", 3)  # max_steps 6
    result = cli("run", "--resume", run)
    assert result.exit_code == 0, result.output
    assert re.search(r"^Epoch 1/1 stopped at batch 6/\d+ \(train\.max_steps\) after [\d.]+ s for batches 4 to 6 "
                     r"\(resumed after batch 3\)$", result.output, re.M), result.output


def test_a_run_trained_on_another_device_is_noted_even_where_the_settings_resolve_alike(tmp_path, write_recipe,
                                                                                     monkeypatch, cli, no_gpu):
    """device auto trained on a GPU, resumed here (no GPU) with --set train.device=cpu: auto resolved on this
    machine says nothing of where the run trained."""
    run = interrupted_at(monkeypatch, write_recipe(), tmp_path / "runs", 3, ["train.device=auto"])
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "device": "cuda:0"}))
    result = cli("run", "--resume", run, "--set", "train.device=cpu")
    assert result.exit_code == 0, result.output
    assert "settings other than those it trained with:\n  train.device: auto -> cpu\n" in result.stderr, result.output


def test_a_precision_that_resolves_as_the_runs_did_is_no_change(tmp_path, write_recipe, monkeypatch, cli, no_gpu):
    run = interrupted_at(monkeypatch, write_recipe(), tmp_path / "runs", 3)  # precision auto: fp32 on a CPU
    refused = cli("run", "--resume", run, "--set", "train.precision=bf16")
    assert refused.exit_code == 2 and "train.precision: auto -> bf16" in refused.output, refused.output
    result = cli("run", "--resume", run, "--set", "train.precision=fp32")
    assert result.exit_code == 0, result.output


def test_the_runs_own_recipe_resumed_with_a_set_notes_nothing(tmp_path, write_recipe, monkeypatch, cli):
    run = interrupted_at(monkeypatch, write_recipe(), tmp_path / "runs", 3, ["sample.tokens=5"])
    result = cli("run", "--resume", run, "--set", "train.max_steps=8", "-q")
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_a_longer_budget_is_compared_with_the_steps_the_old_schedule_covers(tmp_path, write_recipe, cli,
                                                                          temporary_component):
    """A finished run's next step is past its old schedule's last: a schedule that only answers for its own
    steps (a table) is not asked for it, and is not called broken for a comparison."""
    from gptkit.components.schedule import Cosine

    class Table(Cosine):
        def __init__(self, params, total_steps):
            super().__init__(params, total_steps)
            self.table = [super(Table, self).factor(k) for k in range(total_steps)]

        def factor(self, step):
            return self.table[step]

    temporary_component("schedule", "table", Table)
    path = write_recipe(train={"max_steps": 4, "lr": 0.002, "schedule": {"name": "table", "warmup_steps": 0}})
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    result = cli("run", "--resume", run, "--set", "train.max_steps=8", "-q")
    assert result.exit_code == 0, result.output
    assert "warning: train.schedule (table) is now stretched over 8 steps instead of the 4 this run trained toward: " \
           "the learning rate goes from 0.0002 at step 4 to 0.0009 at step 5" in result.output, result.output


def test_a_run_resumed_with_a_budget_at_its_stop_ends_with_that_steps_evaluation(tmp_path, write_recipe,
                                                                                 monkeypatch, cli):
    path = write_recipe(**RELIABLE)  # evaluates every 4 steps: none at step 5
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 5)
    result = cli("run", "--resume", run, "--set", "train.max_steps=5")
    assert result.exit_code == 0, result.output
    fresh = train(load_recipe(path, ["train.max_steps=5"]), runs_dir=tmp_path / "fresh", quiet=True).run_dir
    assert_same_run(fresh, run)  # its final figures are step 5's, as a 5-step run's are
    final = json.loads((run / "summary.json").read_text())["final_val_loss"]
    assert f"Finished: val loss {final:.4f}" in result.output
    again = cli("run", "--resume", run, "--set", "train.max_steps=5", "--set", "sample.tokens=3")
    assert again.exit_code == 0 and losses(run) == losses(fresh)  # evaluated once: not again


def test_an_older_checkpoint_resumed_at_its_budget_is_not_evaluated_again(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe(**RELIABLE)), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["trainer"]["state"]["eval_step"]  # as checkpoints were written before it was recorded
    torch.save(state, run / "checkpoint.pt")
    before = losses(run)
    assert cli("run", "--resume", run, "--set", "sample.tokens=3").exit_code == 0
    assert losses(run) == before  # its last step's evaluation is not written twice


def test_an_older_checkpoint_counts_its_wall_time_as_its_steps_time(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe(**RELIABLE)), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["trainer"]["state"]["step_seconds"]  # as checkpoints were written before it was recorded
    torch.save(state, run / "checkpoint.pt")
    steps = state["trainer"]["state"]["step"]
    assert cli("run", "--resume", run, "--set", f"train.max_steps={steps + 2}", "-q").exit_code == 0
    summary = json.loads((run / "summary.json").read_text())
    # Not the new steps' time alone, which would make all the run's tokens look trained in it.
    assert summary["tokens"] / summary["tokens_per_s"] > state["trainer"]["state"]["seconds"]


def signalled_in(monkeypatch, name: str, sig: int) -> None:
    """A real `sig` to this process right after the first call of gptkit.training.run's `name` returns."""
    import gptkit.training.run as run_module

    original = getattr(run_module, name)

    def signalling(*args, **kwargs):
        out = original(*args, **kwargs)
        monkeypatch.setattr(run_module, name, original)
        os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(run_module, name, signalling)


@pytest.mark.parametrize("step", ["new_run_dir", "remove_leftovers", "write_summary"])
def test_a_ctrl_c_while_the_run_folder_is_set_up_leaves_a_run_to_resume(tmp_path, write_recipe, monkeypatch, cli,
                                                                         step):
    path = write_recipe(model=ONE_LAYER)
    with monkeypatch.context() as m:
        signalled_in(m, step, signal.SIGINT)
        with pytest.raises((Interrupted, KeyboardInterrupt)) as e:  # (a KeyboardInterrupt: a half-made folder)
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    assert e.type is Interrupted and e.value.exit_code == 130
    run = e.value.run_dir
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(run)["step"] == 1  # stopped at its first step boundary
    resumed = cli("run", "--resume", run, "-q")
    assert resumed.exit_code == 0 and json.loads((run / "summary.json").read_text())["status"] == "finished"


def run_cli(args, cwd, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptkit", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def wait_for_metrics(runs: Path, lines: int, proc, timeout=120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for metrics in runs.glob("*/metrics.jsonl"):
            if len(metrics.read_text().splitlines()) >= lines:
                return metrics.parent
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the run never got that far")


@pytest.fixture(scope="module")
def signals_reference(tmp_path_factory):
    """The uninterrupted run every signal's run is compared with: trained once, and only read."""
    folder = tmp_path_factory.mktemp("signals")
    corpus = folder / "corpus.txt"
    corpus.write_text(make_text(), encoding="utf-8")
    path = tiny_recipe(folder, corpus, model={"dropout": 0.1, "n_layer": 4},
                       train={"max_steps": 40, "checkpoint_every": 7, "log_every": 1})
    return path, train(load_recipe(path), runs_dir=folder / "reference", quiet=True).run_dir


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_real_signals_then_resume(tmp_path, signals_reference, sig, code):
    path, ref = signals_reference
    proc = run_cli(["run", path, "--runs-dir", tmp_path / "runs"], cwd=tmp_path)
    run = wait_for_metrics(tmp_path / "runs", 10, proc)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    if sig != signal.SIGKILL:
        assert "checkpoint saved" in out and f"gptkit run --resume {run}" in out and "Traceback" not in out
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    else:  # nothing recorded the kill: the summary is the one refreshed with a checkpoint, the last or the one before
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "running" and summary["steps"] % 7 == 0
        assert 7 <= summary["steps"] <= load_checkpoint(run)["step"] and summary["tokens"] > 0
    resumed = run_cli(["run", "--resume", run, "--runs-dir", tmp_path / "runs"], cwd=tmp_path)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert not list(run.glob(".*.tmp"))
    assert_same_run(ref, run)


def test_a_run_started_ignoring_sigint_keeps_ignoring_it(tmp_path, write_recipe):
    """`gptkit run ... &` in a script: the shell starts it ignoring SIGINT, so a Ctrl-C at the terminal
    (sent to the whole foreground group) leaves it running, as every Unix program does."""
    path = write_recipe(train={"max_steps": 20, "log_every": 1})
    proc = run_cli(["run", path, "--runs-dir", tmp_path / "runs"], cwd=tmp_path,
                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_for_metrics(tmp_path / "runs", 3, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "SIGINT" not in out, out
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_killed_mid_save_leaves_the_previous_checkpoint(tmp_path, write_recipe, monkeypatch):
    import gptkit.io

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    calls = {"n": 0}
    original = gptkit.io.os.replace

    def dies_on_third_save(src, dst):
        calls["n"] += Path(dst).name == "checkpoint.pt"
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for a kill between writing and renaming
        return original(src, dst)

    monkeypatch.setattr(gptkit.io.os, "replace", dies_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    assert load_checkpoint(run)["step"] == 4
    assert not list(run.glob(".*.tmp"))


class FillsUp(io.RawIOBase):
    """A file on a disk with room for `room` more bytes."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def writable(self):
        return True

    def write(self, b):
        self.room -= len(b)
        if self.room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.f.write(b)


def test_a_full_disk_before_the_run_starts_leaves_no_half_made_folder(tmp_path, write_recipe, cli, monkeypatch):
    import gptkit.training.run as run_module

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(run_module, "write_text", disk_full)  # the run's first file, recipe.yaml
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 4, result.output  # a failed save's
    assert re.search(r"^stopped: could not write recipe.yaml in the new run folder .*: No space left on device; "
                     r"nothing was trained and the folder is removed: free some space, or pass --runs-dir",
                     result.output, re.M), result.output
    assert result.output.count("No space left") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # made for the run folder, removed with it


def test_a_run_removed_before_it_started_leaves_a_runs_folder_it_did_not_make(tmp_path, write_recipe, cli, monkeypatch):
    import gptkit.training.run as run_module

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(run_module, "write_text", disk_full)
    assert cli("run", write_recipe(), "--runs-dir", tmp_path / "runs").exit_code == 4
    assert (tmp_path / "runs").is_dir() and not list((tmp_path / "runs").iterdir())


def test_a_full_disk_that_cannot_take_a_run_folder_is_a_failed_save(tmp_path, write_recipe, cli, monkeypatch):
    mkdir = Path.mkdir

    def disk_full(path, *args, **kwargs):
        if path.parent.name == "runs":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return mkdir(path, *args, **kwargs)

    (tmp_path / "runs").mkdir()
    monkeypatch.setattr(Path, "mkdir", disk_full)
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 4 and "cannot create a run folder in " in result.output, result.output
    assert "No space left on device; free some space, or pass --runs-dir" in result.output


def test_runs_folders_made_for_a_run_folder_that_cannot_be_made_are_removed(tmp_path, write_recipe, cli, monkeypatch):
    mkdir = Path.mkdir

    def disk_full(path, *args, **kwargs):  # the runs folders fit, the run's own does not
        if path.name.startswith("tiny-") and path.parent.is_dir():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", disk_full)
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs" / "sub")
    assert result.exit_code == 4 and "No space left on device" in result.output, result.output
    assert not (tmp_path / "runs").exists()


def test_a_failed_save_stops_the_run_loudly(tmp_path, write_recipe, monkeypatch):
    saves = {"n": 0}
    original = torch.save

    def disk_fills_up(obj, f, *args, **kwargs):  # during the second save, within torch's zip writer
        saves["n"] += 1
        return original(obj, FillsUp(f, 5000) if saves["n"] == 2 else f, *args, **kwargs)

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    monkeypatch.setattr(torch, "save", disk_fills_up)
    with pytest.raises(CheckpointError, match="No space left on device; the previous checkpoint is intact") as e:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    assert e.value.exit_code == 4
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["reason"]
    assert load_checkpoint(run)["step"] == summary["checkpoint_step"] == 2 and not list(run.glob(".*.tmp"))


def test_a_full_disk_for_the_last_summary_is_a_failed_save_that_resuming_finishes(tmp_path, write_recipe, monkeypatch):
    from gptkit.training import run as run_module

    write_summary = run_module.write_summary

    def disk_full_at_the_end(run_dir, recipe, trainer, status, *args, **kwargs):
        if status == "finished":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run_dir / ".summary.json.tmp"))
        return write_summary(run_dir, recipe, trainer, status, *args, **kwargs)

    recipe = load_recipe(write_recipe(train={"max_steps": 3}))
    monkeypatch.setattr(run_module, "write_summary", disk_full_at_the_end)
    with pytest.raises(CheckpointError, match=r"could not write summary.json in .*: No space left on device; the run is "
                                              r"trained and its checkpoint saved .*Free some space and resume") as e:
        train(recipe, runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    assert e.value.exit_code == 4 and (run / "samples.txt").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "running" and summary["checkpoint_step"] == 3  # as of the last save
    monkeypatch.setattr(run_module, "write_summary", write_summary)  # space freed
    assert train(recipe, resume=run, quiet=True).summary["status"] == "finished"


@pytest.mark.parametrize("code, fix", [(errno.ENOSPC, "Free some space"), (errno.EACCES, "Make the run folder writable")])
def test_a_failed_first_save_says_that_no_checkpoint_was_saved(tmp_path, write_recipe, monkeypatch, code, fix):
    def fails(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(torch, "save", fails)
    with pytest.raises(CheckpointError, match=rf"{os.strerror(code)}; no checkpoint was saved yet \(resuming "
                                              rf"starts the run over\)\. {fix} and resume with resume='") as e:
        train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True)
    assert e.value.exit_code == 4 and not (e.value.run_dir / "checkpoint.pt").exists()
    assert str(e.value).endswith(f"resume with resume='{e.value.run_dir}'")  # named as train's argument


GoesNaN = breaks_after(10, how="nan")  # diverges at step 11


def test_divergence_at_the_first_step_stops_the_run(tmp_path, write_recipe):
    path = write_recipe(train={"max_steps": 30, "lr": 1e6, "grad_clip": None, "checkpoint_every": 100})
    with pytest.raises(Diverged, match=r"training diverged at step \d+: the (loss|gradient norm) is (nan|inf). "
                                       r"Nothing from that step on was saved and no checkpoint had been saved yet"):
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)


def test_a_loss_not_finite_before_any_update_names_the_plugin_components_not_the_lr(tmp_path, write_recipe,
                                                                                     temporary_component):
    temporary_component("feedforward", "nan-from-the-start", breaks_after(0, how="nan"))
    path = write_recipe(model={"feedforward": "nan-from-the-start"}, train={"max_steps": 2})
    with pytest.raises(Diverged) as e:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    assert e.value.exit_code == 3 and str(e.value) == (
        "training diverged at step 1: the model's loss is nan before any update, so the learning rate is not the "
        "cause. Nothing from that step on was saved and no checkpoint had been saved yet; its plugin component may "
        "compute it: feedforward 'nan-from-the-start' (`gptkit.conformance.check_component('feedforward', "
        "'nan-from-the-start')`)")  # from Python: a notebook's component is no command's


def test_a_loss_not_finite_before_any_update_of_built_in_components_points_at_the_data(tmp_path, write_recipe,
                                                                                      monkeypatch):
    cross_entropy = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: cross_entropy(*a, **k) * math.inf)
    with pytest.raises(Diverged, match=r"^training diverged at step 1: the model's loss is (inf|nan) before any "
                                       r"update, so the learning rate is not the cause\. .*; the model has only "
                                       r"gptkit's own components: check the training text and the model's sizes"):
        train(load_recipe(write_recipe(train={"max_steps": 2})), runs_dir=tmp_path / "runs", quiet=True)


@pytest.mark.parametrize("lr, val_fraction, what", [
    (1e10, 0.1, "the validation loss after it is nan"),  # its last update broke the weights: its loss came before
    (1e38, 0.0, "its update left weights that are not finite"),  # no validation to find it: the save does
])
def test_a_last_step_that_breaks_the_weights_is_a_divergence(tmp_path, write_recipe, lr, val_fraction, what):
    """Not a finished run with a loss of NaN (which broke an ablation's report), nor a save's traceback."""
    path = write_recipe(train={"max_steps": 1, "lr": lr, "grad_clip": None})
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "data": {**data["data"], "val_fraction": val_fraction}}))
    with pytest.raises(Diverged, match=f"^training diverged at step 1: {what}. Nothing after its training loss was "
                                       "saved and no checkpoint had been saved yet"):
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and not summary["resumable"] and not (run / "checkpoint.pt").exists()
    # Its loss, taken before the update, is a good one, and written: the summary counts the step, as the metrics do.
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1] and "val_loss" not in records[0] and summary["steps"] == 1


def test_a_finished_run_resumed_takes_no_step_and_reports_no_epoch(tmp_path, write_recipe, cli):
    """train.max_steps ends it mid-epoch; resumed to sample again, it has no epoch to go on with."""
    run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    result = cli("run", "--resume", run, "--set", "sample.tokens=5")
    assert result.exit_code == 0 and "Epoch" not in result.output and "Val loss" not in result.output, result.output
    assert json.loads((run / "summary.json").read_text())["steps"] == 6
    assert result.stdout.startswith(f"{run} has taken all 6 steps of its budget: nothing to train (raise "
                                    "train.max_steps to train on); its sample settings are saved and its sample made "
                                    "again\n"), result.stdout
    result = cli("run", "--resume", run, "--set", "sample.tokens=0")
    assert result.exit_code == 0 and result.stdout.startswith(
        f"{run} has taken all 6 steps of its budget: nothing to train (raise train.max_steps to train on); its sample "
        "settings are saved and its sample not made (sample.tokens is 0)\n"), result.stdout


@pytest.mark.parametrize("older", [False, True], ids=["checkpoint", "older-checkpoint"])
def test_the_best_validation_loss_compares_the_same_windows_only(tmp_path, write_recipe, monkeypatch, older):
    """Resumed with another train.eval_batches, the validation is another measure: the best starts again
    (an older checkpoint's state does not count its windows: its recipe says them)."""
    path = write_recipe(train={"max_steps": 6, "eval_every": 3, "eval_batches": 1})
    with monkeypatch.context() as m:
        stop_at(m, "train_step", 4)
        if older:
            state_dict = Trainer.state_dict
            m.setattr(Trainer, "state_dict", lambda self: (d := state_dict(self)) and d["state"].pop("eval_windows") and d)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    load = Trainer.load_state_dict

    def better_before(self, saved, *args):  # the first windows' best beats any loss the second may give
        load(self, saved, *args)
        self.state.best_val_loss = 1e-9

    monkeypatch.setattr(Trainer, "load_state_dict", better_before)
    logs = io.StringIO()
    monkeypatch.setattr(sys, "stdout", logs)
    result = train(load_recipe(path, ["train.eval_batches=2"]), runs_dir=tmp_path / "runs", resume=run)
    vals = [r["val_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    assert len(vals) == 2 and result.summary["best_val_loss"] == vals[1] > 1e-9
    assert "The validation now takes 16 windows, not 8 (train.eval_batches)" in logs.getvalue()


@pytest.mark.parametrize("log_every", [1, 7])
def test_divergence_stops_the_run_before_anything_from_that_step_is_written(tmp_path, write_recipe,
                                                                           temporary_component, log_every):
    """Losses and gradient norms are checked when they are read back, at each log line and before every
    checkpoint and evaluation (no host sync per step); what was written before the bad step stays."""
    temporary_component("feedforward", "goes-nan", GoesNaN)
    path = write_recipe(model={"feedforward": "goes-nan"},
                        train={"max_steps": 30, "checkpoint_every": 3, "log_every": log_every})
    with pytest.raises(Diverged, match=r"training diverged at step 11: the loss is nan. .* the last good "
                                       r"checkpoint \(step 9\) is intact") as e:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    run = e.value.run_dir
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"] == 10 and summary["tokens"] == 10 * 8 * 32
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "train_loss" in r]
    assert logged == list(range(1, 11))  # with 7, steps 10 and 11 are read at the step 12 checkpoint
    assert all(math.isfinite(r.get("train_loss", 0)) and math.isfinite(r.get("grad_norm", 0)) for r in records)
    saved = load_checkpoint(run)
    assert saved["step"] == 9
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_a_diverged_run_is_not_resumed(tmp_path, write_recipe, temporary_component, cli):
    """Resumed as it was, it would diverge again, and train.lr may not change: --resume auto starts a new
    run instead, and --resume of that folder says why it cannot go on."""
    temporary_component("feedforward", "goes-nan", GoesNaN)
    path = write_recipe(model={"feedforward": "goes-nan"}, train={"max_steps": 30, "checkpoint_every": 3})
    with pytest.raises(Diverged) as e:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    diverged = e.value.run_dir
    assert json.loads((diverged / "summary.json").read_text())["resumable"] is False
    result = cli("run", path, "--resume", diverged)
    assert result.exit_code == 2 and f"cannot resume {diverged}: training diverged at step 11" in result.output
    with pytest.raises(Diverged) as again:
        train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")
    assert again.value.run_dir != diverged  # a new run: it diverges too, after its own 10 good steps
    assert json.loads((again.value.run_dir / "summary.json").read_text())["steps"] == 10


def test_a_run_folder_moved_while_it_trains_is_not_made_again(tmp_path, write_recipe, cli, monkeypatch):
    moved = tmp_path / "moved"
    original = Trainer.train_step

    def move_at_step_3(self, *args, **kwargs):  # as `mv` in another terminal would
        out = original(self, *args, **kwargs)
        if self.state.step == 3:
            (folder,) = (tmp_path / "runs").iterdir()
            folder.rename(moved)
        return out

    monkeypatch.setattr(Trainer, "train_step", move_at_step_3)
    result = cli("run", write_recipe(train={"max_steps": 6, "checkpoint_every": 2}), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 4, result.output
    assert re.search(r"^stopped: the run folder \S+ is gone: it was moved or deleted while the run trained, so nothing "
                     r"more is saved; if it was moved, resume it from where it is now \(gptkit run --resume "
                     r"NEW_FOLDER\)$", result.stderr, re.M), result.stderr
    assert "Run folder:" not in result.stderr  # it is not there to point at
    assert not any((tmp_path / "runs").iterdir())  # not made again, half empty
    monkeypatch.setattr(Trainer, "train_step", original)
    resumed = cli("run", "--resume", moved)  # from its checkpoint of step 2, where it is now
    assert resumed.exit_code == 0 and "Resuming" in resumed.output and "from step 2 of 6" in resumed.output, \
        resumed.output
    assert json.loads((moved / "summary.json").read_text())["status"] == "finished"


def test_a_full_disk_while_writing_metrics_stops_the_run_like_a_failed_save(tmp_path, write_recipe, monkeypatch):
    import gptkit.training.run as run_module

    class FillsUp:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 5:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    monkeypatch.setattr(run_module, "open", lambda *a, **k: FillsUp(open(*a, **k)), raising=False)
    with pytest.raises(CheckpointError, match="could not write metrics.jsonl in .*: No space left on device; no "
                                              "checkpoint was saved yet") as e:  # (the first is at step 6)
        train(load_recipe(write_recipe(train={"max_steps": 6, "log_every": 2})), runs_dir=tmp_path / "runs", quiet=True)
    assert e.value.exit_code == 4
    summary = json.loads((e.value.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["reason"]


def test_cli_exit_code_for_divergence(cli, tmp_path, write_recipe):
    result = cli("run", write_recipe(train={"lr": 1e6, "grad_clip": None, "max_steps": 30}), "--runs-dir", tmp_path)
    assert result.exit_code == 3 and re.search(r"^stopped: training diverged at step", result.output, re.M)
    assert "Traceback" not in result.output and "--resume" not in result.output  # it would only diverge again


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {Payload.marker}",))


def test_a_pickled_payload_is_refused_without_running_it(tmp_path, cli):
    Payload.marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "gptkit-checkpoint", "model": Payload()}, evil)
    result = cli("sample", evil)
    assert result.exit_code == 2 and result.output == (f"error: checkpoint {evil} holds objects other than tensors and "
                                                       "plain values (posix.system); refused without running them\n")
    assert not Payload.marker.exists()


def flip_byte_in(path: Path, member: str, at: int) -> None:
    """Damage one byte of the zip member whose name ends with `member` (its checksum no longer fits)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member))
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + at] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "weights", "pickle", "directory"])
def test_a_damaged_checkpoint_is_reported_with_its_path(tmp_path, write_recipe, cli, damage):
    recipe = write_recipe()
    run = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    if damage in ("weights", "pickle"):  # a flipped bit: torch.load itself would not notice in the weights
        flip_byte_in(ckpt, "data/0" if damage == "weights" else "data.pkl", at=20)
    elif damage == "directory":  # the end record's offsets: zipfile raises a ValueError of its own
        ckpt.write_bytes(data[:-43] + bytes([data[-43] ^ 0xFF]) + data[-42:])
    else:
        ckpt.write_bytes({"truncate": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    for command in (["sample", run], ["run", recipe, "--resume", run]):
        result = cli(*command)
        assert result.exit_code == 2 and f"checkpoint {ckpt} is truncated or corrupted" in result.output, result.output


def test_running_out_of_memory_loading_a_checkpoint_is_not_called_damage(tmp_path, write_recipe, cli, monkeypatch):
    recipe = write_recipe()
    run = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch, "load", no_memory)
    for command in (["sample", run], ["run", recipe, "--resume", run]):
        result = cli(*command)
        assert result.exit_code == 2, result.output
        assert result.output.strip() == (f"error: out of memory loading checkpoint {run / 'checkpoint.pt'} (the model's "
                                         "weights and optimizer state); close other programs that use the machine's memory")


def test_weights_that_do_not_fit_the_recipe_are_a_clear_error(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["model"]["lm_head.weight"]
    torch.save(state, run / "checkpoint.pt")
    result = cli("sample", run)
    assert result.exit_code == 2 and "its weights do not fit the model its recipe describes" in result.output, result.output
    assert 'Missing key(s) in state_dict: "lm_head.weight"' in result.output  # what does not fit


def test_weights_that_are_not_finite_are_a_clear_error_not_a_sample_of_newlines(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["model"]["transformer.h.0.mlp.c_fc.weight"][0, 0] = math.nan
    torch.save(state, run / "checkpoint.pt")
    for result in (cli("sample", run, "--tokens", "5"), cli("run", "--resume", run)):
        assert result.exit_code == 2 and result.output.startswith(f"error: checkpoint {run}") and result.output.endswith(
            ": its weights are not finite (transformer.h.0.mlp.c_fc.weight holds NaN or inf), so the model computes "
            "nothing; the file was damaged or edited: use another checkpoint\n"), result.output


@pytest.mark.parametrize("key, value", [("itos", None), ("step", "7"), ("recipe", [1])])
def test_a_checkpoint_lacking_what_gptkit_reads_is_a_clear_error(tmp_path, write_recipe, cli, key, value):
    recipe = write_recipe()
    run = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state[key] = value
    torch.save(state, run / "checkpoint.pt")
    for command in (["sample", run], ["run", recipe, "--resume", run]):
        result = cli(*command)
        assert result.exit_code == 2 and f"checkpoint {run / 'checkpoint.pt'} lacks a valid {key}" in result.output, \
            result.output


@pytest.mark.parametrize("edit, lacks", [
    (lambda s: s.__setitem__("step", -5), "checkpoint {ckpt} lacks a valid step (a count of steps, 0 or more)"),
    (lambda s: s.__setitem__("step", True), "checkpoint {ckpt} lacks a valid step"),
    (lambda s: s.__setitem__("version", "1"), "checkpoint {ckpt} lacks a valid version"),
    (lambda s: s["trainer"].__setitem__("optimizer", "x"), "cannot resume {run}: its checkpoint.pt lacks a valid "
     "optimizer state; sample it with gptkit sample {run}, or start a new run without --resume"),
    (lambda s: s.__setitem__("trainer", "garbage"), "its checkpoint.pt lacks a valid training state;"),
    (lambda s: s["trainer"].__setitem__("state", "x"), "lacks a valid training state (step, epoch, losses, time)"),
    (lambda s: s["trainer"]["state"].__setitem__("recent_losses", "x"), "lacks a valid training state (step, epoch"),
    (lambda s: s["trainer"]["state"].__setitem__("seconds", "1.5"), "lacks a valid training state (step, epoch"),
    (lambda s: s["trainer"]["state"].__setitem__("unknown", 1), "lacks a valid training state (step, epoch"),
    (lambda s: s["trainer"]["state"].__setitem__("step", 2), "lacks a valid training state (of step 2, in the "
     "checkpoint of step 3)"),
    (lambda s: s["trainer"].__setitem__("rng", {"cpu": torch.zeros(3)}), "lacks a valid random state;"),
    (lambda s: s.__setitem__("text_sha256", 5), "lacks a valid text_sha256;"),
])
def test_a_training_state_damaged_or_edited_by_hand_is_refused_before_resuming(tmp_path, write_recipe, cli, edit, lacks):
    recipe = write_recipe(train={"max_steps": 3})
    run = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, run / "checkpoint.pt")
    metrics = (run / "metrics.jsonl").read_text()
    result = cli("run", recipe, "--resume", run)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert lacks.format(ckpt=run / "checkpoint.pt", run=run) in result.output, result.output
    assert (run / "metrics.jsonl").read_text() == metrics  # nothing written


def test_a_checkpoint_of_a_newer_format_is_refused(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe(train={"max_steps": 1})), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["version"] = 99
    torch.save(state, run / "checkpoint.pt")
    result = cli("sample", run)
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint {run / 'checkpoint.pt'} was written by a newer gptkit (checkpoint format 99; this one reads "
        "format 1); upgrade gptkit to use it\n"), result.output


def test_an_unreadable_checkpoint_is_said_so_not_called_damaged(tmp_path, write_recipe, cli, monkeypatch):
    import zipfile

    run = train(load_recipe(write_recipe(train={"max_steps": 1})), runs_dir=tmp_path / "runs", quiet=True).run_dir

    def denied(*args, **kwargs):  # what chmod 000 does to a user without root's override
        raise PermissionError(13, "Permission denied", str(run / "checkpoint.pt"))

    monkeypatch.setattr(zipfile, "ZipFile", denied)
    result = cli("sample", run)
    assert result.exit_code == 2 and result.output == (
        f"error: cannot read checkpoint {run / 'checkpoint.pt'}: Permission denied; give yourself read access to "
        "it\n"), result.output


def test_a_full_disk_at_the_final_sample_keeps_the_run_finished_and_says_how_to_sample_it(
        cli, tmp_path, write_recipe, monkeypatch):
    import errno

    import gptkit.training.run as run_module

    real = run_module.write_text

    def write_text(path, text):
        if path.name == "samples.txt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, text)

    monkeypatch.setattr(run_module, "write_text", write_text)
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert result.stderr == (f"warning: could not write samples.txt in {run}: No space left on device; the run is "
                             f"finished and its checkpoint saved: sample it with gptkit sample {run}\n")
    assert "characters after the prompt, not saved):" in result.stdout and not (run / "samples.txt").exists()
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_checkpoint_that_is_a_folder_is_said_so(tmp_path, write_recipe, cli):
    recipe = write_recipe(train={"max_steps": 1})
    run = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir
    (run / "checkpoint.pt").unlink()
    (run / "checkpoint.pt").mkdir()
    for command in (["sample", run], ["run", "--resume", run], ["sample", run / "checkpoint.pt"]):
        result = cli(*command)
        assert result.exit_code == 2 and result.output == (f"error: checkpoint {run / 'checkpoint.pt'} is a folder, not "
                                                           "a file; it cannot be used\n"), result.output


def test_gptkit_never_unpickles_arbitrary_objects():
    root = Path(__file__).resolve().parents[1] / "gptkit"
    offenders = [p for p in root.rglob("*.py") if "weights_only=False" in p.read_text() or "pickle.load(" in p.read_text()]
    assert not offenders


def non_plain_values(value, where="checkpoint") -> list[str]:
    """Where `value` holds anything but tensors, numbers, strings, booleans, None, and dicts (with
    string or integer keys), lists and tuples of them."""
    if isinstance(value, dict):
        return [f"{where} key {k!r}" for k in value if type(k) not in (str, int)] + [
            bad for k, v in value.items() for bad in non_plain_values(v, f"{where}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [bad for i, v in enumerate(value) for bad in non_plain_values(v, f"{where}[{i}]")]
    return [] if isinstance(value, torch.Tensor) or type(value) in (int, float, str, bool, type(None)) \
        else [f"{where}: {type(value).__module__}.{type(value).__qualname__}"]


@pytest.mark.parametrize("optimizer", registry("optimizer").names())
def test_checkpoints_hold_only_plain_values(tmp_path, write_recipe, optimizer):
    """What the README promises, so that loading never needs an allow-list of gptkit's (or a plugin
    optimizer's) classes."""
    run = train(load_recipe(write_recipe(train={"optimizer": optimizer})), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["trainer"] and state["model"]  # the optimizer's state and the weights are in what is walked
    assert not non_plain_values(state), non_plain_values(state)


def test_a_run_stopped_before_its_first_checkpoint_starts_over_in_its_folder(tmp_path, write_recipe, cli):
    path = write_recipe()
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    (run / "checkpoint.pt").unlink()  # as if killed before the first save
    (run / "samples.txt").unlink()
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running", "resumable": True,
                                                  "checkpoint_step": None}))
    (run / ".checkpoint.pt.abc.tmp").write_bytes(b"half")
    other = cli("run", path, "--resume", run, "--set", "train.lr=0.5")
    assert other.exit_code == 2 and "train.lr: 0.001 -> 0.5" in other.output, other.output
    again = cli("run", "--resume", run)
    assert again.exit_code == 0 and f"{run} has no checkpoint yet: starting it over" in again.output, again.output
    assert (run / "checkpoint.pt").is_file() and (run / "samples.txt").is_file()
    assert len(list((tmp_path / "runs").iterdir())) == 1 and not list(run.glob(".*.tmp"))
    auto = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs")
    assert f"No unfinished run of tiny in {tmp_path / 'runs'} to resume (1 ended); starting a new one." in auto.output


def test_resume_of_a_users_folder_holding_a_recipe_leaves_it_alone(tmp_path, write_recipe, cli):
    folder = tmp_path / "myexp"
    folder.mkdir()
    notes = {"recipe.yaml": "# my notes\n" + write_recipe().read_text(), ".notes.tmp": "keep"}
    for name, text in notes.items():
        (folder / name).write_text(text)
    result = cli("run", "--resume", folder)
    assert result.exit_code == 2 and f"--resume {folder}: not a run folder (no readable summary.json)" in result.output
    assert {p.name: p.read_text() for p in folder.iterdir()} == notes


def test_damaged_metrics_at_the_end_are_dropped_on_resume(tmp_path, monkeypatch, write_recipe, cli):
    path = write_recipe(train={"max_steps": 8, "log_every": 1, "eval_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 4)
    metrics = run / "metrics.jsonl"
    curve = val_curve(run)
    metrics.write_bytes(metrics.read_bytes() + b'{"step": "x"}\n\xff\xfe garbage\n[1]\n')
    assert curve and val_curve(run) == curve  # the damage passed by
    result = cli("run", "--resume", run, "-q")
    assert result.exit_code == 0, result.output
    steps = [json.loads(line)["step"] for line in metrics.read_text(encoding="utf-8").splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8


@pytest.mark.parametrize("where, message", [("nowhere", "no such folder"), ("file", "not a folder"),
                                            ("empty", "not a run folder (no recipe.yaml)")])
def test_resume_of_something_that_is_not_a_run_folder(tmp_path, cli, where, message):
    target = tmp_path / where
    if where == "file":
        target.write_text("x")
    elif where == "empty":
        target.mkdir()
    result = cli("run", "--resume", target)
    assert result.exit_code == 2 and f"--resume {target}: {message}" in result.output


def test_resume_or_sample_of_an_ablation_folder_says_so(tmp_path, cli):
    folder = tmp_path / "abl"
    (folder / "baseline" / "seed-3").mkdir(parents=True)
    (folder / "ablation.yaml").write_text("name: abl\n")
    result = cli("run", "--resume", folder)
    assert result.exit_code == 2 and result.output == (
        f"error: --resume {folder}: an ablation folder, not a run folder; to resume the ablation: "
        f"gptkit ablate {folder / 'ablation.yaml'} --out {folder}\n")
    result = cli("sample", folder)
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint {folder / 'checkpoint.pt'} not found: {folder} is an ablation folder, not a run "
        f"folder: sample one of its runs, e.g. gptkit sample {folder / 'baseline' / 'seed-3'}\n")


def test_sample_of_a_run_that_failed_before_its_first_save_says_why(tmp_path, cli):
    run = tmp_path / "run"
    run.mkdir()
    reason = "training diverged at step 1: the loss is nan"
    (run / "summary.json").write_text(json.dumps({"status": "failed", "reason": reason, "resumable": False}))
    for given in (run, run / "checkpoint.pt"):  # the folder, or the checkpoint in it
        with pytest.raises(UserError, match=re.escape(f"not found: the run's summary.json says it failed ({reason}) "
                                                      "before its first save, so nothing was saved")):
            load_checkpoint(given)
    with pytest.raises(UserError, match=r"checkpoint .*checkpoint\.pt not found$"):  # a run that says nothing more
        (run / "summary.json").unlink()
        (run / "recipe.yaml").write_text("name: run\n")
        load_checkpoint(run)


def test_sample_of_a_folder_or_path_that_is_no_run_says_what_to_give(tmp_path, cli):
    (tmp_path / "notes").mkdir()
    result = cli("sample", tmp_path / "notes")
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint {tmp_path / 'notes' / 'checkpoint.pt'} not found: {tmp_path / 'notes'} is not a run "
        "folder; give a run folder (runs/NAME-YYYYmmdd-HHMMSS) or a checkpoint file\n")
    result = cli("sample", tmp_path / "nowhere")
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint or run folder {tmp_path / 'nowhere'} not found; give a run folder "
        "(runs/NAME-YYYYmmdd-HHMMSS) or a checkpoint file\n")
    run = tmp_path / "runs" / "tiny-20260101-120000"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text("name: tiny\n")
    result = cli("sample", tmp_path / "runs" / "tiny-2026")  # a name cut short: the runs beside it are named
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint or run folder {tmp_path / 'runs' / 'tiny-2026'} not found; {tmp_path / 'runs'} holds runs: "
        f"give one of them, e.g. {run}\n")


def test_a_finished_run_without_its_checkpoint_is_not_trained_again(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    (run / "checkpoint.pt").unlink()
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and "it finished, and its checkpoint.pt is gone" in result.output
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_stopped_run_whose_checkpoint_is_gone_is_not_started_over(tmp_path, write_recipe, cli, monkeypatch):
    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 3)
    (run / "checkpoint.pt").unlink()
    metrics = (run / "metrics.jsonl").read_text()
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and result.output == (
        f"error: cannot resume {run}: its checkpoint.pt (of step 3) is gone; put it back, or start a new run without "
        "--resume\n"), result.output
    assert (run / "metrics.jsonl").read_text() == metrics


def test_resuming_with_new_sample_settings_and_no_step_left_saves_them(tmp_path, write_recipe, cli):
    path = write_recipe()
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    finished = json.loads((run / "summary.json").read_text())
    assert cli("run", path, "--resume", run, "--set", "sample.tokens=3").exit_code == 0
    assert load_checkpoint(run)["recipe"]["sample"]["tokens"] == 3  # what `gptkit sample RUN` then uses
    resumed = json.loads((run / "summary.json").read_text())
    for key in ("wall_seconds", "tokens_per_s", "steps", "final_val_loss"):  # nothing trained: the run's own figures
        assert resumed[key] == finished[key], key


def test_a_budget_below_the_steps_trained_is_refused(tmp_path, reference, cli):
    path, ref = reference
    result = cli("run", "--resume", ref, "--set", "train.max_steps=3")
    assert result.exit_code == 2 and "past this recipe's budget of 3" in result.output, result.output


def test_a_refused_resume_says_nothing_of_the_schedule_it_would_have_run(tmp_path, write_recipe, cli):
    path = write_recipe(train={"max_steps": 6, "schedule": {"name": "cosine", "warmup_steps": 4}})
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    result = cli("run", "--resume", run, "--set", "train.max_steps=3")  # warm-up longer than the run, too
    assert result.exit_code == 2 and "past this recipe's budget of 3" in result.output, result.output
    assert "warning" not in result.output, result.output


def test_a_run_being_trained_by_another_process_is_not_taken_over(tmp_path, write_recipe, cli):
    import fcntl

    from gptkit.training.resume import is_locked

    path = write_recipe(train={"max_steps": 6, "checkpoint_every": 2})
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running", "resumable": True}))
    (run / ".lock").unlink()
    assert not is_locked(run) and not (run / ".lock").exists()  # probing creates nothing
    with open(run / ".lock", "a") as held:  # as the other process holds it while it trains
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert is_locked(run) and is_locked(run)  # probes do not block each other
        (run / "checkpoint.pt").rename(run / "saved.pt")  # as before its first checkpoint
        result = cli("run", "--resume", run)
        assert result.exit_code == 2 and result.output == f"error: {run} is being trained by another process; " \
            "wait for it to end, or stop it (Ctrl-C or kill), then resume\n"  # and nothing about starting it over
        (run / "saved.pt").rename(run / "checkpoint.pt")
        result = cli("run", "--resume", run)
        assert result.exit_code == 2 and f"{run} is being trained by another process" in result.output
        auto = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs")
        assert auto.exit_code == 0 and "Run folder:" in auto.output  # a new run, not this one
    assert cli("run", "--resume", run).exit_code == 0  # released: the run can be resumed now


# A gptkit process whose Trainer.fit waits for the file READER_GONE: the test closes the pipe the run's
# output goes to while it is set up, before training prints anything more.
WAIT_FOR_THE_READER_TO_GO = """
import os, time
from gptkit.training.trainer import Trainer
fit = Trainer.fit
def waiting(self):
    while not os.path.exists(os.environ["READER_GONE"]):
        time.sleep(0.01)
    return fit(self)
Trainer.fit = waiting
from gptkit._entry import main
main()
"""
SMALL = {"model": {"n_layer": 1, "n_head": 2}, "train": {"max_steps": 8, "log_every": 1, "eval_every": 4}}


def cli_env(buffered: bool = True) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("PYTHONUNBUFFERED", None)
    return env if buffered else {**env, "PYTHONUNBUFFERED": "1"}


def with_reader_gone(args, cwd, buffered=True, stderr_too=False) -> subprocess.CompletedProcess:
    """`gptkit ARGS` writing into a pipe nobody reads any more (`| head` that has exited); with
    `stderr_too`, stderr as well (`2>&1 | tee log`, and the tee died)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([sys.executable, "-m", "gptkit", *map(str, args)], cwd=cwd, env=cli_env(buffered),
                              stdout=write, stderr=write if stderr_too else subprocess.PIPE, timeout=300)
    finally:
        os.close(write)


def test_a_run_whose_reader_goes_away_trains_on_and_finishes(tmp_path, write_recipe):
    """gptkit run RECIPE | head -2: training goes on, silently, to its end."""
    path, gone = write_recipe(**SMALL), tmp_path / "gone"
    proc = subprocess.Popen([sys.executable, "-c", WAIT_FOR_THE_READER_TO_GO, "run", path, "--runs-dir", "runs"],
                            cwd=tmp_path, env={**cli_env(), "READER_GONE": str(gone)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "runs").glob("*/summary.json")):  # written just before fit
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.stdout.close()  # the reader goes; the run has more to print
    gone.touch()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "error" not in err and "Traceback" not in err, err
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 8, summary
    assert (run / "samples.txt").is_file()
    sampled = with_reader_gone(["sample", run, "--tokens", "50"], tmp_path)  # gptkit sample RUN | head -c 5
    assert sampled.returncode == 0 and b"error" not in sampled.stderr, sampled.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, a file whose every write finds the disk full")
def test_a_log_on_a_full_disk_is_dropped_and_the_run_trains_on(tmp_path, write_recipe):
    """gptkit run RECIPE > log, the log's disk full: the run is not the log; a sample, whose output is its
    product, fails."""
    with open("/dev/full", "w") as full:
        ran = subprocess.run([sys.executable, "-m", "gptkit", "run", write_recipe(**SMALL), "--runs-dir", "runs"],
                             cwd=tmp_path, env=cli_env(), stdout=full, stderr=subprocess.PIPE, timeout=300, text=True)
        assert ran.returncode == 0, ran.stderr
        assert "warning: cannot write to stdout (No space left on device): its output from here on is dropped\n" \
            in ran.stderr and "error" not in ran.stderr, ran.stderr
        (run,) = (tmp_path / "runs").iterdir()
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        sampled = subprocess.run([sys.executable, "-m", "gptkit", "sample", run, "--tokens", "50"], cwd=tmp_path,
                                 env=cli_env(), stdout=full, stderr=subprocess.PIPE, timeout=300, text=True)
    assert sampled.returncode == 1 and sampled.stderr.startswith("warning: cannot write to stdout"), sampled.stderr
    with open("/dev/full", "w") as full:
        listed = subprocess.run([sys.executable, "-m", "gptkit", "list"], cwd=tmp_path, env=cli_env(), stdout=full,
                                stderr=subprocess.PIPE, timeout=300, text=True)
        assert listed.returncode == 1, listed.stderr  # its output was all it made
        quiet_log = subprocess.run([sys.executable, "-m", "gptkit", "sample", run, "--tokens", "5", "--seed", "0"],
                                   cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=full, timeout=300,
                                   text=True)
    assert quiet_log.returncode == 0 and "warning" not in quiet_log.stdout, quiet_log.stdout  # not said in the product


def test_a_sample_whose_reader_goes_away_stops_there(tmp_path, write_recipe):
    """gptkit sample RUN --tokens 10000000 | head -c 5: sampling ends at the first write nobody reads,
    quietly, rather than generating every token into the void (hours of it: some 2,000 tokens/s)."""
    run = train(load_recipe(write_recipe(**SMALL)), runs_dir=tmp_path / "runs", quiet=True).run_dir
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "sample", str(run), "--tokens", "10000000"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(5) == b"KING:"  # the prompt, then the reader goes
    proc.stdout.close()
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == b"", err  # nor the "10000000 tokens in ..." line: it stopped early


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "python-u"])
def test_a_command_whose_reader_is_gone_ends_quietly(tmp_path, buffered):
    """gptkit list | head -2"""
    result = with_reader_gone(["list"], tmp_path, buffered)
    assert result.returncode == 0 and result.stderr == b"", result.stderr


def test_an_ablation_whose_reader_is_gone_trains_every_run(tmp_path, write_recipe):
    """gptkit ablate ... 2>&1 | tee log, and the tee dies"""
    path = write_recipe(**SMALL)
    result = with_reader_gone(["ablate", path, "--vary", "model.norm=layernorm", "--seeds", "1", "--out", "abl"],
                              tmp_path, stderr_too=True)
    assert result.returncode == 0
    assert "2 of 2 runs finished." in (tmp_path / "abl" / "results.md").read_text()


# --- --resume auto passes by runs it could not resume; summary.json is as fresh as the checkpoint -------

ONE_LAYER = {"n_layer": 1, "n_head": 2}


def test_resume_auto_passes_by_a_run_whose_recipe_differs(tmp_path, write_recipe, monkeypatch, capsys, cli):
    path = write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2})
    runs = tmp_path / "runs"
    same = interrupted_at(monkeypatch, path, runs, 2)
    other = interrupted_at(monkeypatch, path, runs, 2, ["train.lr=0.002"])
    os.utime(same, (time.time() - 60, time.time() - 60))  # the newer folder by its time, whatever the clock's grain
    capsys.readouterr()
    result = train(load_recipe(path), runs_dir=runs, quiet=True, resume="auto")  # the older one, of this recipe
    assert result.run_dir == same and result.summary["status"] == "finished" and result.summary["steps"] == 6
    assert capsys.readouterr().err == (f"note: not resuming {other}: its recipe differs (train.lr); to go on with its "
                                       f"own recipe: train(load_recipe('{other / 'recipe.yaml'}'), resume='{other}')\n")
    auto = cli("run", path, "--set", "train.lr=0.003", "--resume", "auto", "--runs-dir", runs, "-q")
    assert auto.exit_code == 0, auto.output
    assert f"note: not resuming {other}: its recipe differs (train.lr); to go on with its own recipe: gptkit run " \
           f"--resume {other}\n" in auto.stderr
    assert len(list(runs.iterdir())) == 3  # a new run
    explicit = cli("run", path, "--resume", other)  # named, it is refused as before
    assert explicit.exit_code == 2 and "the recipe changed in ways that matter:\n  train.lr: 0.002 -> 0.001" in explicit.output
    seeded = cli("run", path, "--resume", other, "--set", "seed=5")  # its --set named, as every other error names it
    assert seeded.exit_code == 2 and f"error: --set seed=5: cannot resume {other}" in seeded.output, seeded.output


def test_resume_auto_passes_by_a_run_of_another_text(tmp_path, write_recipe, monkeypatch, corpus, cli):
    path = write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 2)
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    corpus.write_text("".join(reversed(lines)), encoding="utf-8")
    auto = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs", "-q")
    assert auto.exit_code == 0, auto.output
    assert auto.stderr == f"note: not resuming {run}: it was trained on another text than {corpus}\n"
    assert len(list((tmp_path / "runs").iterdir())) == 2


def test_a_checkpoint_whose_stored_recipe_is_invalid_is_said_so_not_as_a_change(tmp_path, write_recipe, monkeypatch,
                                                                                   cli):
    path = write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 2)
    checkpoint = run / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["recipe"]["model"]["n_layer"] = "three"  # edited by hand
    torch.save(state, checkpoint)
    problem = f"the recipe stored in {checkpoint}: model.n_layer: Input should be a valid integer (got 'three')"
    resumed = cli("run", "--resume", run)
    assert resumed.exit_code == 2 and resumed.output == (f"error: cannot resume {run}: {problem}\nThe run cannot go on "
                                                         "from that checkpoint; start a new run without --resume.\n")
    auto = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs", "-q")
    assert auto.exit_code == 0 and auto.stderr == f"note: not resuming {run}: {problem}\n", auto.output
    sampled = cli("sample", checkpoint, "--tokens", "1")  # as `gptkit sample` says it
    assert sampled.exit_code == 2 and sampled.output == f"error: {problem}\n"


def test_resuming_without_its_text_names_the_file_and_how_to_go_on(tmp_path, write_recipe, monkeypatch, corpus, cli):
    run = interrupted_at(monkeypatch, write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2}),
                         tmp_path / "runs", 2)
    moved = corpus.rename(tmp_path / "moved.txt")
    result = cli("run", "--resume", run)  # its recipe.yaml names the text by an absolute path: nothing relative
    assert result.exit_code == 2 and result.output == (f"error: data.path: file {corpus} not found; restore it, or point "
                                                       f"data.path at a copy of the text {run} was trained on, e.g. "
                                                       "--set data.path=FILE\n")
    with pytest.raises(UserError) as e:  # from Python, where train() takes no overrides
        train(load_recipe(run / "recipe.yaml"), resume=run, quiet=True)
    assert str(e.value).endswith("trained on (the recipe's data.path)")
    assert cli("run", "--resume", run, "--set", f"data.path={moved}", "-q").exit_code == 0  # as it says


def test_resume_auto_says_the_unfinished_run_is_in_use(tmp_path, write_recipe, monkeypatch, cli):
    import fcntl

    path = write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2})
    run = interrupted_at(monkeypatch, path, tmp_path / "runs", 2)
    with open(run / ".lock", "a") as held:  # as the process training it holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        auto = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs")
    assert auto.exit_code == 0, auto.output
    assert f"note: not resuming {run}: it is being trained by another process\n" in auto.stderr
    assert f"No other unfinished run of tiny in {tmp_path / 'runs'} to resume; starting a new one." in auto.stdout
    assert "No unfinished run of tiny" not in auto.output


def test_a_killed_runs_summary_is_as_fresh_as_its_checkpoint(tmp_path, write_recipe, monkeypatch):
    import gptkit.training.run as run_module

    class Killed(BaseException):
        pass

    def killed_at_step_5(self, *args):
        if self.state.step == 5:
            raise Killed
        return original_step(self, *args)

    path = write_recipe(model=ONE_LAYER, train={"max_steps": 8, "checkpoint_every": 3, "log_every": 2})
    original_step = Trainer.train_step
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", killed_at_step_5)
        m.setattr(run_module, "record_failure", lambda *args, **kwargs: None)  # SIGKILL: nothing is recorded
        with pytest.raises(Killed):
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    (run,) = (tmp_path / "runs").iterdir()
    summary, state = json.loads((run / "summary.json").read_text()), load_checkpoint(run)["trainer"]["state"]
    assert summary["status"] == "running" and summary["resumable"] and summary["steps"] == state["step"] == 3
    assert summary["tokens"] == state["tokens"] > 0 and summary["wall_seconds"] == state["seconds"] > 0
    assert summary["tokens_per_s"] > 0 and summary["final_train_loss"] == state["train_loss"] is not None
    result = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True, resume="auto")  # running: unfinished
    assert result.run_dir == run and result.summary["status"] == "finished" and result.summary["steps"] == 8


def test_a_stop_signal_is_taken_when_stderr_is_gone(monkeypatch):
    import signal
    from types import SimpleNamespace

    from gptkit.training import signals

    def gone(fd, data):
        raise BrokenPipeError(32, "Broken pipe")

    trainer = SimpleNamespace(stop_signal=None, dist=SimpleNamespace(is_main=True))
    monkeypatch.setattr(signals.os, "write", gone)  # the handler's note cannot be written
    with signals.stop_on_signals(trainer):
        signal.raise_signal(signal.SIGTERM)
    assert trainer.stop_signal == signal.SIGTERM


def test_a_checkpoint_holds_its_optimizer_state_on_the_cpu(tmp_path, monkeypatch):
    """A GPU run's AdamW moments would make `torch.load(weights_only=True)` fail on a machine without CUDA:
    every tensor of the training state goes through .cpu() (a CPU run cannot show the device itself)."""
    from gptkit.training.checkpoint import save_checkpoint

    moment, step = torch.ones(3), torch.tensor(4.0)
    moved, cpu = [], torch.Tensor.cpu

    def recording(t):
        moved.append(t.data_ptr())  # of the tensor or a view of it (detached)
        return cpu(t)

    monkeypatch.setattr(torch.Tensor, "cpu", recording)
    save_checkpoint(tmp_path / "c.pt", torch.nn.Linear(2, 2), {}, ["a"], step=1,
                    trainer={"optimizer": {"state": {0: {"exp_avg": moment, "step": step}}}, "losses": [moment]})
    assert {moment.data_ptr(), step.data_ptr()} <= set(moved)
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(loaded["trainer"]["optimizer"]["state"][0]["exp_avg"], moment)


def test_a_recipe_diff_writes_values_as_a_recipe_does():
    old = {"model": {"dropout": 0.0, "tie_embeddings": True, "positional": {"name": "sinusoidal", "amplitude": 0.02}}}
    new = {"model": {"dropout": 0.1, "tie_embeddings": False, "positional": {"name": "rope"}}}
    assert recipe_diff(old, new) == ["model.dropout: 0.0 -> 0.1", "model.positional.amplitude: 0.02 -> (absent)",
                                     "model.positional.name: sinusoidal -> rope", "model.tie_embeddings: true -> false"]


def test_running_out_of_memory_at_the_first_step_is_one_error_and_leaves_no_run_folder(cli, tmp_path, write_recipe,
                                                                                       temporary_component):
    temporary_component("feedforward", "hungry", breaks_after(0, how="oom"))
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(model={"feedforward": "hungry"}), "--runs-dir", runs)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith(
        "error: out of memory on cpu at step 1: micro-batches of 8 rows of 32 tokens need more than it has; lower "
        "train.micro_batch_size, model.block_size or the model's size (no checkpoint had been saved yet)\n"
        "(nothing was trained: "), result.stderr
    assert not runs.exists()


def test_running_out_of_memory_later_keeps_the_run_and_says_what_to_resume_with(cli, tmp_path, write_recipe,
                                                                                temporary_component):
    temporary_component("feedforward", "hungry", breaks_after(3, how="oom"))
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(model={"feedforward": "hungry"}, train={"checkpoint_every": 2}), "--runs-dir", runs)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    (run_dir,) = runs.iterdir()
    assert result.stderr == ("error: out of memory on cpu at step 4: micro-batches of 8 rows of 32 tokens need more "
                             "than it has; lower train.micro_batch_size, model.block_size or the model's size (the last "
                             "checkpoint (step 2) is intact: a resumed run may take smaller micro-batches "
                             f"(train.micro_batch_size))\nRun folder: {run_dir}  (its last checkpoint is intact; once "
                             f"that is fixed, continue: gptkit run --resume {run_dir})\n")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["resumable"] and summary["checkpoint_step"] == 2
    assert summary["reason"].startswith("OutOfMemory: out of memory on cpu at step 4")


def test_running_out_of_memory_saving_a_checkpoint_is_a_failed_save_not_a_step_too_large(cli, tmp_path, write_recipe,
                                                                                          monkeypatch):
    import gptkit.training.run as run_module

    def save_checkpoint(path, model, recipe, itos, **extra):
        if extra["step"] == 4:
            raise MemoryError
        real_save(path, model, recipe, itos, **extra)

    real_save = run_module.save_checkpoint
    monkeypatch.setattr(run_module, "save_checkpoint", save_checkpoint)
    result = cli("run", write_recipe(train={"checkpoint_every": 2}), "--runs-dir", tmp_path / "runs")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert result.exit_code == 4 and "Traceback" not in result.output, result.output
    assert result.stderr == (f"stopped: could not save the checkpoint in {run_dir}: out of memory (a save copies the "
                             "model and optimizer state into the machine's memory); the previous checkpoint is intact. "
                             "Free some memory (close other programs) and resume with --resume\n"
                             f"Run folder: {run_dir}  (continue: gptkit run --resume {run_dir})\n")
    assert load_checkpoint(run_dir)["step"] == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["resumable"] and summary["checkpoint_step"] == 2


def test_running_out_of_memory_in_the_final_sample_keeps_the_run_finished_and_says_how_to_sample_it(
        cli, tmp_path, write_recipe, monkeypatch):
    import gptkit.training.run as run_module
    from conftest import CPU_OOM

    recipe, runs = write_recipe(), tmp_path / "runs"
    assert cli("run", recipe, "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()

    def sample(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(run_module, "sample", sample)
    result = cli("run", "--resume", run, "--set", "train.max_steps=8")  # trained further, then sampled
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert result.stderr == (f"warning: out of memory on cpu while sampling after training, so there is no samples.txt; "
                             f"the run is finished and its checkpoint saved: sample it with gptkit sample {run}, which "
                             "holds no training state\n")
    assert "Finished: " in result.stdout
    assert not (run / "samples.txt").exists()  # the first session's, of the model 2 steps ago
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == summary["checkpoint_step"] == 8
    assert load_checkpoint(run)["step"] == 8
    monkeypatch.undo()
    assert cli("sample", run, "--tokens", "5").exit_code == 0  # as the warning says


def test_validation_runs_in_micro_batches_and_running_out_of_memory_there_says_so(cli, tmp_path, write_recipe,
                                                                                  temporary_component):
    from gptkit.components.feedforward import MLP
    from conftest import CPU_OOM

    class HungryInValidation(MLP):  # more than 4 rows at once do not fit, in validation alone
        def forward(self, x):
            if not self.training and x.size(0) > 4:
                raise RuntimeError(CPU_OOM)
            return super().forward(x)

    temporary_component("feedforward", "hungry", HungryInValidation)
    recipe = write_recipe(model={"feedforward": "hungry"}, train={"eval_every": 2, "checkpoint_every": 2})
    result = cli("run", recipe, "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.startswith(
        "error: out of memory on cpu in the validation at step 2: micro-batches of 8 rows of 32 tokens need more than "
        "it has; lower train.micro_batch_size, "), result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    result = cli("run", "--resume", run_dir, "--set", "train.micro_batch_size=4")  # what the message says to lower
    assert result.exit_code == 0 and "Finished:" in result.stdout, result.output


def test_running_out_of_memory_in_the_check_before_sampling_is_not_blamed_on_a_component(cli, tmp_path, write_recipe,
                                                                                        monkeypatch):
    from conftest import CPU_OOM

    from gptkit.components.attention import FlashAttention

    recipe, runs = write_recipe(), tmp_path / "runs"
    assert cli("run", recipe, "--runs-dir", runs).exit_code == 0
    (run,) = runs.iterdir()

    def attend(self, *args):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(FlashAttention, "attend", attend)
    result = cli("sample", run, "--tokens", "5")
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr == ("error: out of memory on cpu while sampling: the model needs more memory than it has "
                             "free; close other programs that use it\n")


def test_resume_auto_does_not_pass_by_a_run_it_has_no_memory_to_load(tmp_path, write_recipe, cli, monkeypatch):
    from conftest import CPU_OOM

    recipe, runs = write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2}), tmp_path / "runs"
    run = interrupted_at(monkeypatch, recipe, runs, 2)

    def no_memory(*args, **kwargs):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(torch, "load", no_memory)
    result = cli("run", recipe, "--runs-dir", runs, "--resume", "auto")
    assert result.exit_code == 2 and result.output.startswith("error: out of memory loading checkpoint "), result.output
    assert list(runs.iterdir()) == [run]  # no new run started beside it


def test_running_out_of_memory_in_the_first_forward_pass_is_one_error_before_any_run_folder(cli, tmp_path,
                                                                                            write_recipe, monkeypatch):
    from conftest import CPU_OOM

    from gptkit.components.attention import FlashAttention

    def attend(self, *args):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(FlashAttention, "attend", attend)
    result = cli("run", write_recipe(), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.output == (
        "error: out of memory on cpu in the checks before training (forward passes of a few tokens, and of one sequence "
        "of a block); free some memory (close other programs that use it) and try again\n"), result.output
    assert not (tmp_path / "runs").exists()


def test_running_out_of_memory_loading_the_optimizer_state_to_resume_is_one_error(cli, tmp_path, write_recipe,
                                                                                   monkeypatch):
    from conftest import CPU_OOM

    run = interrupted_at(monkeypatch, write_recipe(model=ONE_LAYER, train={"max_steps": 6, "checkpoint_every": 2}),
                         tmp_path / "runs", 2)

    def load_state_dict(self, saved, saved_recipe=None):
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(Trainer, "load_state_dict", load_state_dict)
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and result.output.startswith(
        "error: out of memory on cpu taking the text and the checkpoint onto it, before training; free some memory "
        "(close other programs that use it) and try again\n"), result.output
    assert load_checkpoint(run)["step"] == 2  # the run is as it was


def test_a_file_system_refusing_permission_bits_still_gets_the_file_and_keeps_no_descriptor(tmp_path, monkeypatch):
    import errno

    from gptkit.io import write_text

    def refuse(fd, mode):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    before = len(os.listdir("/proc/self/fd"))
    for i in range(3):
        write_text(tmp_path / "f.txt", f"text {i}")
    assert (tmp_path / "f.txt").read_text() == "text 2" and len(os.listdir("/proc/self/fd")) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_resume_auto_passes_by_a_run_trained_past_the_recipes_budget(tmp_path, write_recipe, monkeypatch, capsys):
    path = write_recipe(model=ONE_LAYER, train={"max_steps": 6})
    runs = tmp_path / "runs"
    longer = interrupted_at(monkeypatch, path, runs, 4, ["train.max_steps=8"])
    capsys.readouterr()
    result = train(load_recipe(path, ["train.max_steps=3"]), runs_dir=runs, quiet=True, resume="auto")
    assert result.run_dir != longer and result.summary["steps"] == 3  # a new run, not an error
    assert capsys.readouterr().err == (f"note: not resuming {longer}: it has trained 4 steps, past this recipe's "
                                       "budget of 3\n")


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_while_a_finished_command_exits_changes_nothing(tmp_path, write_recipe):
    """The interpreter takes half a second to end (torch's exit handlers): a Ctrl-C then must neither print a
    traceback nor turn a finished run's exit code into an interruption's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "gptkit", "run", str(write_recipe(model=ONE_LAYER)), "-q",
                             "--runs-dir", str(tmp_path / "runs")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in iter(proc.stdout.readline, ""):
            if line.startswith("Run folder"):  # its last line: from here on, the process only ends
                # (after the command returns: a signal in the microseconds between its last line and the return
                # is the command's Ctrl-C, handled as one; not what this test is about)
                time.sleep(0.1)
                for _ in range(10):
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGINT)
                    time.sleep(0.03)
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "Exception ignored" not in err, err
    finally:
        proc.kill()


@pytest.mark.parametrize("status, said", [
    ("running", "(stopped (killed?), before its first save); gptkit run --resume {run} starts it over"),
    ("interrupted", "(interrupted, before its first save); gptkit run --resume {run} starts it over")])
def test_sampling_a_run_stopped_before_its_first_save_says_so(cli, write_recipe, tmp_path, status, said):
    run = tmp_path / "runs" / "tiny-1"
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(Path(write_recipe()).read_text())
    (run / "summary.json").write_text(json.dumps({"name": "tiny", "status": status}))
    (run / ".lock").touch()  # held by no process: a "running" run was killed
    result = cli("sample", run)
    assert result.exit_code == 2 and result.output == (
        f"error: checkpoint {run / 'checkpoint.pt'} not found: the run has no checkpoint yet "
        f"{said.format(run=run)}\n"), result.output


def test_resume_auto_counts_a_run_stopped_before_its_first_checkpoint(cli, write_recipe, tmp_path):
    path = write_recipe(model=ONE_LAYER, train={"max_steps": 2})
    run = tmp_path / "runs" / "tiny-20260101-120000"  # named as gptkit names runs
    run.mkdir(parents=True)
    (run / "recipe.yaml").write_text(Path(path).read_text())
    (run / "summary.json").write_text(json.dumps({"name": "tiny", "status": "interrupted", "resumable": True}))
    result = cli("run", path, "--resume", "auto", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0 and (f"No unfinished run of tiny in {tmp_path / 'runs'} to resume (1 stopped before its "
                                      "first checkpoint); starting a new one.") in result.output, result.output
