"""Training end to end: the run folder, checkpoint, sampling, the Python API, flash vs naive."""

import json
import math
import random
import re

import pytest
import torch
import yaml

from gptkit import load_recipe, train, train_model
from gptkit.recipe import Recipe
from gptkit.registry import kinds, registry
from gptkit.training.checkpoint import load_model
from conftest import trainer_for


def only_run(runs):
    (run,) = list(runs.iterdir())
    return run


def test_run_writes_everything_a_user_needs(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(), "--runs-dir", runs)
    assert result.exit_code == 0, result.output
    run = only_run(runs)
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "metrics.jsonl", "checkpoint.pt", "samples.txt", "summary.json"}
    assert f"Run folder: {run}" in result.output and "Finished: val loss" in result.output
    assert "Epoch 1/1 | Batch 2/" in result.output and "| Loss: " in result.output
    assert f"in samples.txt too):\n{(run / 'samples.txt').read_text()}\n" in result.output  # the run ends with its sample

    summary = json.loads((run / "summary.json").read_text())
    for key in ("final_train_loss", "final_val_loss", "best_val_loss", "params", "steps", "tokens_per_s", "wall_seconds"):
        assert summary[key] is not None, key
    assert summary["steps"] == 6 and summary["best_val_loss"] <= summary["final_val_loss"]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train_loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7))
    assert all({"epoch", "lr", "grad_norm", "tokens_per_s"} <= r.keys() for r in steps)
    assert [r for r in records if "val_loss" in r][-1]["val_loss"] == summary["final_val_loss"]
    # The run's tokens/s is its steps', as metrics.jsonl gives them: evaluations, saves and the sample left out.
    per_step = summary["tokens"] / summary["steps"]
    assert summary["tokens_per_s"] == pytest.approx(summary["tokens"] / sum(per_step / r["tokens_per_s"] for r in steps))
    assert summary["tokens"] / summary["wall_seconds"] < summary["tokens_per_s"]

    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert {"model", "recipe", "vocab_size", "stoi", "itos"} <= state.keys()
    assert state["vocab_size"] == len(state["itos"]) == len(state["stoi"])
    assert state["recipe"] == yaml.safe_load((run / "recipe.yaml").read_text())
    assert (run / "samples.txt").read_text().startswith("KING:")
    assert not list(run.glob(".*.tmp"))


def test_the_log_line_and_the_summary_give_the_same_train_loss(cli, tmp_path, write_recipe):
    """The mean of the last log_every steps: a single step's loss would seem to jump at the end."""
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(), "--runs-dir", runs, "--set", "train.log_every=3")  # 6 steps
    assert result.exit_code == 0, result.output
    run = only_run(runs)
    losses = [r["train_loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if "train_loss" in r]
    logged = [float(x) for x in re.findall(r"\| Loss: ([\d.]+)$", result.output, re.M)]
    assert logged == pytest.approx([sum(losses[:3]) / 3, sum(losses[3:]) / 3], abs=1e-4)
    assert json.loads((run / "summary.json").read_text())["final_train_loss"] == pytest.approx(logged[-1], abs=1e-4)


def test_the_epoch_line_says_when_max_steps_cut_the_epoch_short(cli, tmp_path, write_recipe):
    cut = cli("run", write_recipe(), "--runs-dir", tmp_path / "cut")  # max_steps 6, in a longer epoch
    assert cut.exit_code == 0, cut.output
    assert re.search(r"^Epoch 1/1 stopped at batch 6/\d+ \(train\.max_steps\) after [\d.]+ s$", cut.output, re.M)
    assert "done in" not in cut.output
    # the opening lines say the budget the epoch counter counts toward, not only the recipe's epochs
    per = int(re.search(r"stopped at batch 6/(\d+)", cut.output)[1])
    assert re.search(rf"^Budget: 6 steps \(train\.max_steps: {6 / per:.1f} of 1 epoch of {per} batches\)$", cut.output,
                     re.M), cut.output
    full = cli("run", write_recipe(), "--set", "data.max_lines=40", "--set", "train.max_steps=null",
               "--set", "train.epochs=2", "--runs-dir", tmp_path / "full")
    assert full.exit_code == 0, full.output
    assert re.search(r"^Budget: (\d+) steps? \(2 epochs of \d+ batch(es)?\)$", full.output, re.M), full.output
    # a log without the live line (a file) says what is left at each epoch's end but the last
    assert re.search(r"^Epoch 1/2 done in [\d.]+ s \(about (\d+:\d\d|[<\d.]+ s) left\)$", full.output, re.M), full.output
    assert re.search(r"^Epoch 2/2 done in [\d.]+ s$", full.output, re.M) and "stopped at" not in full.output


def test_the_opening_lines_say_when_data_max_lines_cuts_the_text(cli, tmp_path, write_recipe, corpus):
    """A file of one's own under a recipe with max_lines (the Shakespeare ones) trains on its first lines
    only: said where the run describes its data, not only in errors."""
    result = cli("run", write_recipe(data={"path": str(corpus), "max_lines": 300}, train={"max_steps": 1}))
    assert result.exit_code == 0, result.output
    assert f"validation tokens of data.path {corpus} (its first 300 lines, data.max_lines)\n" in result.output


def test_sample_command(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    cli("run", write_recipe(), "--runs-dir", runs, "-q")
    run = only_run(runs)
    args = ("sample", run, "--prompt", "QUEEN:", "--tokens", "40", "--temperature", "0.8", "--top-k", "5", "--seed", "3")
    first, second = cli(*args), cli(*args)
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("QUEEN:") and len(first.stdout.rstrip("\n")) >= len("QUEEN:") + 40 - 1
    assert first.stdout == second.stdout
    assert re.fullmatch(r"40 tokens in [\d.]+ s, [\d,]+ tokens/s \(key/value cache\)\n", first.stderr)
    assert cli(*args, "--no-cache").stdout == first.stdout
    unseeded = []
    for _ in range(2):  # without --seed a new draw, whatever state torch's global generators are in
        torch.manual_seed(0)
        unseeded.append(cli(*args[:-2], "--tokens", "60").stdout)
    assert unseeded[0] != unseeded[1]
    unknown = cli("sample", run, "--prompt", "Ωmega")
    assert unknown.exit_code == 2 and "--prompt 'Ωmega': characters not in the vocabulary: 'Ω'" in unknown.output


def test_sample_command_defaults_to_the_runs_own_sampling(cli, tmp_path, write_recipe):
    """The run's recipe sampled `tokens` characters with its temperature and top_k: so does `gptkit sample`."""
    runs = tmp_path / "runs"
    cli("run", write_recipe(), "--runs-dir", runs, "-q", "--set", "sample.tokens=7", "--set", "sample.top_k=null",
        "--set", "sample.temperature=0.5")
    run = only_run(runs)
    own = cli("sample", run, "--seed", "1")
    assert own.stdout.startswith("KING:") and own.stderr.startswith("7 tokens in ")
    assert own.stdout == cli("sample", run, "--seed", "1", "--temperature", "0.5", "--top-k", "0").stdout
    assert own.stdout != cli("sample", run, "--seed", "1", "--temperature", "0.5", "--top-k", "1", "--tokens", "7").stdout


def test_a_run_with_sample_tokens_0_samples_nothing(cli, tmp_path, write_recipe):
    runs = tmp_path / "runs"
    result = cli("run", write_recipe(train={"max_steps": 2}), "--runs-dir", runs, "--set", "sample.tokens=0")
    assert result.exit_code == 0 and "Finished:" in result.stdout and "Sample (" not in result.stdout
    run = only_run(runs)
    assert not (run / "samples.txt").exists()
    result = cli("run", "--resume", run, "--set", "sample.tokens=5")  # a finished run's new sample settings
    assert result.exit_code == 0 and "Sample (5 characters" in result.stdout and (run / "samples.txt").exists()
    result = cli("run", "--resume", run, "--set", "sample.tokens=0")
    assert result.exit_code == 0 and not (run / "samples.txt").exists()  # not left from the earlier settings
    assert "No sample (sample.tokens is 0): the samples.txt an earlier session made is removed\n" in result.stdout
    result = cli("run", "--resume", run, "--set", "sample.tokens=0")
    assert result.exit_code == 0 and "No sample" not in result.stdout  # nothing to remove


def test_training_lowers_the_loss(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe(train={"max_steps": 60, "lr": 3e-3, "log_every": 20}))
    result = train(recipe, runs_dir=tmp_path / "runs", quiet=True)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if "train_loss" in r]
    assert losses[0] > 2.5 and sum(losses[-10:]) / 10 < losses[0] - 1.0


def test_flash_and_naive_train_step_for_step(tmp_path, write_recipe):
    losses = {}
    for attention in ("flash", "naive"):
        recipe = load_recipe(write_recipe(model={"attention": attention, "positional": "alibi"}, train={"max_steps": 8}))
        result = train(recipe, runs_dir=tmp_path / attention, quiet=True)
        records = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        losses[attention] = [json.loads(r)["train_loss"] for r in records if "train_loss" in r]
    assert losses["flash"] == pytest.approx(losses["naive"], abs=1e-4)


def test_python_api(tmp_path, write_recipe, corpus):
    save = tmp_path / "model.pt"
    model, dataset = train_model(write_recipe(), data_path=corpus, epochs=1, save_path=save,
                                 runs_dir=tmp_path / "runs", quiet=True)
    assert dataset.vocab_size == model.config.vocab_size
    loaded, recipe, vocab = load_model(save)
    assert vocab.itos == dataset.itos
    x = dataset.vocab.encode("KING:")[None]
    assert not model.training  # returned ready to generate: dropout off
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert torch.load(save, weights_only=True)["plugins"] == {}  # none here; load_model names missing ones


def test_python_api_trains_on_the_data_path_it_is_given(tmp_path, write_recipe):
    odd = tmp_path / "my #1 corpus: v2.txt"  # YAML would read a comment and a mapping into it
    rng = random.Random(0)
    text = "".join(rng.choice("0123456789+=\n") for _ in range(4000))  # none of the corpus's characters but "\n"
    odd.write_text(text, encoding="utf-8")
    recipe = write_recipe(sample={"prompt": "1+1=", "tokens": 5})
    _, dataset = train_model(recipe, data_path=odd, epochs=1, runs_dir=tmp_path / "runs", quiet=True)
    assert dataset.itos == sorted(set(text))
    saved = yaml.safe_load((only_run(tmp_path / "runs") / "recipe.yaml").read_text())
    assert saved["data"]["path"] == str(odd)


def test_a_text_without_validation_split_trains(tmp_path, write_recipe):
    result = train(load_recipe(write_recipe(), ["data.val_fraction=0"]), runs_dir=tmp_path / "runs", quiet=True)
    assert result.summary["status"] == "finished" and result.summary["final_val_loss"] is None


def test_seed_makes_runs_identical(tmp_path, write_recipe):
    path = write_recipe()
    a = train(load_recipe(path), runs_dir=tmp_path / "a", quiet=True)
    b = train(load_recipe(path), runs_dir=tmp_path / "b", quiet=True)
    assert (a.run_dir / "metrics.jsonl").read_text().count("train_loss") == 6
    la = [json.loads(x).get("train_loss") for x in (a.run_dir / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x).get("train_loss") for x in (b.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


# Every recipe field named after a component kind (model.attention, train.optimizer, data.corpus, ...).
COMPONENT_FIELDS = {field: section for section, info in Recipe.model_fields.items()
                    for field in getattr(info.annotation, "model_fields", {}) if field in kinds()}
SWAPS = [f"{section}.{kind}={name}" for kind, section in COMPONENT_FIELDS.items() for name in registry(kind).names()]


def test_every_kind_is_a_recipe_field():
    assert sorted(COMPONENT_FIELDS) == sorted(kinds())


@pytest.mark.parametrize("override", SWAPS + ["train.precision=bf16", "model.dropout=0.1"])
def test_every_component_and_setting_trains(tmp_path, write_recipe, override):
    result = train(load_recipe(write_recipe(train={"max_steps": 2}), [override]), runs_dir=tmp_path / "runs", quiet=True)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and math.isfinite(summary["final_val_loss"]), summary


def test_bf16_trains_in_bf16_on_a_cpu(tmp_path, write_recipe, monkeypatch):
    """train.precision: bf16 is autocast (the CPU too, when asked): matmuls in bf16, weights in fp32."""
    from gptkit.model import GPT

    seen = []
    forward = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, *a, **k: (
        seen.append((torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None,
                     self.lm_head.weight.dtype)), forward(self, *a, **k))[1])
    train(load_recipe(write_recipe(train={"max_steps": 1, "precision": "bf16", "device": "cpu"})),
          runs_dir=tmp_path / "runs", quiet=True)
    assert (torch.bfloat16, torch.float32) in seen, seen  # (the checks before training run in fp32)


def test_resuming_a_folder_that_cannot_be_written_is_one_error(tmp_path, write_recipe, cli, monkeypatch):
    import errno

    from gptkit.training import resume

    path = write_recipe()
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir

    def read_only(file, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(file))

    monkeypatch.setattr(resume, "open", read_only, raising=False)
    result = cli("run", path, "--resume", run, "--set", "train.max_steps=20")
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"error: {run} cannot be written (Read-only file system): a run trains and resumes in its own folder; "
        "copy it somewhere writable and resume the copy"], result.output


def test_resuming_a_folder_whose_files_cannot_be_written_is_one_error(tmp_path, write_recipe, cli, monkeypatch):
    import errno

    from gptkit.training import run as run_module

    path = write_recipe()
    run = train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True).run_dir

    def not_permitted(file, *args):  # the folder takes its lock file, but not changes to the others (chattr +i)
        raise OSError(errno.EPERM, "Operation not permitted", str(file))

    monkeypatch.setattr(run_module, "truncate_metrics", not_permitted)
    result = cli("run", path, "--resume", run, "--set", "train.max_steps=20")
    assert result.exit_code == 2 and result.output.splitlines() == [
        f"error: cannot resume {run}: Operation not permitted: {run / 'metrics.jsonl'}; nothing was trained: make "
        "the run folder writable and try again"], result.output


def test_a_checkpoint_whose_characters_do_not_match_its_vocabulary_size_is_refused(tmp_path, write_recipe, cli):
    run = train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True).run_dir
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["itos"] = state["itos"][:10]
    torch.save(state, tmp_path / "cut.pt")
    result = cli("sample", tmp_path / "cut.pt", "--tokens", "50")
    assert result.exit_code == 2 and "lacks a valid itos (as many characters as vocab_size)" in result.output, \
        result.output
    for bad, why in ((5, "a list of single characters"), ("ab", "a list of single characters"),
                     (state["itos"][1], "each character once")):
        torch.save({**state, "itos": [bad, *state["itos"][1:]], "vocab_size": len(state["itos"])}, tmp_path / "bad.pt")
        result = cli("sample", tmp_path / "bad.pt", "--tokens", "5")
        assert result.exit_code == 2 and f"lacks a valid itos ({why})" in result.output, result.output


def test_a_warm_up_longer_than_the_run_is_warned_of(cli, tmp_path, write_recipe):
    warmup = {"schedule": {"name": "cosine", "warmup_steps": 50}}  # max_steps 6
    result = cli("run", write_recipe(train=warmup), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0 and result.stderr.startswith(
        "warning: train.schedule (cosine) never reaches train.lr in 6 steps (at most 12% of it): its warmup_steps "
        "(50) is longer than the run\n"), result.output
    quiet = cli("run", write_recipe(train=warmup), "--runs-dir", tmp_path / "runs", "-q")
    assert quiet.stderr == result.stderr  # -q quiets the progress, not a warning
    short = {"schedule": {"name": "cosine", "warmup_steps": 4}}
    long_enough = cli("run", write_recipe(train=short), "--runs-dir", tmp_path / "runs", "-q")
    assert long_enough.exit_code == 0 and "warning" not in long_enough.output, long_enough.output
    no_decay = {"schedule": {"name": "cosine", "warmup_steps": 5}}  # the last step is the peak
    result = cli("run", write_recipe(train=no_decay), "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0 and result.stderr.startswith(
        "warning: train.schedule (cosine) never decays to its min_factor (0.1) in 6 steps: its warmup_steps (5) "
        "leave no step to decay over\n"), result.output


def test_gradients_are_clipped_to_train_grad_clip_and_no_further(write_recipe):
    path = write_recipe()

    def step(grad_clip):
        """The gradients the optimizer was given, flat, and the norm the step recorded."""
        trainer, starts = trainer_for(path, f"train.grad_clip={grad_clip}")
        with torch.no_grad():
            trainer.model.lm_head.weight.mul_(10)  # sharper logits: a gradient norm well above 1
        grads = []
        trainer.optimizer.step = lambda: grads.extend(p.grad.flatten().clone() for p in trainer.model.parameters())
        _, norm = trainer.train_step(starts, 0, 1e-3)
        return torch.cat(grads), float(norm)

    free, norm = step("null")
    assert norm == pytest.approx(float(free.norm()), rel=1e-5) and norm > 1.5
    clipped, recorded = step(0.5)
    assert recorded == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    assert float(clipped.norm()) <= 0.5 + 1e-5
    torch.testing.assert_close(clipped, free * 0.5 / norm)  # scaled as a whole, its direction kept
    loose, _ = step(norm + 1)
    assert torch.equal(loose, free)


def test_validation_loss_is_the_mean_over_every_window_however_the_batches_fall(write_recipe):
    trainer, _ = trainer_for(write_recipe(train={"batch_size": 7}))
    windows = trainer.dataset.eval_starts()
    assert len(trainer.eval_starts) == len(windows) and len(windows) % 7  # a last batch of fewer rows
    with torch.no_grad():
        _, expected = trainer.model.eval()(*trainer.dataset.batch(windows, split="val"))  # all at once
    assert trainer.evaluate() == pytest.approx(float(expected), rel=1e-5)


def test_what_happens_during_a_validation_is_placed_at_its_step_not_the_next(write_recipe):
    trainer, _ = trainer_for(write_recipe())
    trainer.state.step = 20
    assert trainer.where() == "at step 21"  # in training: the step being taken
    trainer.state.eval_pending = True
    assert trainer.where() == "in the validation at step 20"


def test_running_out_of_memory_outside_the_steps_and_validations_does_not_blame_the_micro_batches(write_recipe):
    from gptkit.errors import OutOfMemory

    trainer, _ = trainer_for(write_recipe(train={"checkpoint_every": 2}))

    def on_checkpoint(trainer):
        if trainer.state.step == 4:
            raise MemoryError

    trainer.on_checkpoint = on_checkpoint
    with pytest.raises(OutOfMemory) as e:
        trainer.fit()
    assert str(e.value) == ("out of memory on cpu after step 4, outside the training steps and validations; free "
                            "some memory (close other programs) and try again (the last checkpoint (step 2) is intact)")


def test_keeping_the_random_state_puts_back_apples_gpus_too(monkeypatch):
    """torch.manual_seed seeds the MPS generator as well, which fork_rng leaves alone."""
    from gptkit.device import keep_random_state

    calls = []
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: calls.append("get") or torch.tensor([7]))
    monkeypatch.setattr(torch.mps, "set_rng_state", lambda state: calls.append(("set", int(state))))
    with keep_random_state(torch.device("mps")):
        calls.append("inside")
    assert calls == ["get", "inside", ("set", 7)]
    with keep_random_state(torch.device("cpu")):
        pass
    assert len(calls) == 3  # not asked of a CPU run


def test_torch_defaults_add_no_mode_every_eager_op_would_go_through():
    """A device context (`with torch.device(...)`) is a TorchFunctionMode: 1.5 us more on every eager op,
    which a cached generation step of a small model makes hundreds of."""
    from torch.overrides import _get_current_function_mode_stack

    from gptkit.device import torch_defaults

    outside = _get_current_function_mode_stack()
    with torch_defaults():
        assert _get_current_function_mode_stack() == outside


def test_sampling_a_run_not_finished_says_how_far_it_trained(cli, tmp_path, write_recipe, monkeypatch):
    from conftest import stop_at

    from gptkit.errors import Interrupted

    stop_at(monkeypatch, "train_step", 3)
    with pytest.raises(Interrupted) as e:
        train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True)
    monkeypatch.undo()
    run = e.value.run_dir
    result = cli("sample", run, "--tokens", "5", "--seed", "0")
    assert result.exit_code == 0, result.output
    assert f"note: {run} is trained as far as step 3 of 6 (interrupted): its checkpoint's model is sampled\n" \
        in result.output
    assert "note: " in cli("sample", run / "checkpoint.pt", "--tokens", "5").output  # its checkpoint given
    train(load_recipe(write_recipe()), runs_dir=tmp_path / "runs", quiet=True, resume=run)
    assert "note:" not in cli("sample", run, "--tokens", "5", "--seed", "0").output  # finished: nothing to say


def test_a_terminal_is_told_while_the_first_step_compiles(tmp_path, write_recipe, monkeypatch):
    """Compiling on a CPU takes up to a minute or two before the first step: the live line says so, and
    the log (stdout, a file's content) stays as it was."""
    import io

    from gptkit.training import progress
    from gptkit.training.trainer import Trainer

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(progress.sys, "stderr", terminal)
    monkeypatch.setattr(Trainer, "is_compiled", property(lambda self: True))
    train(load_recipe(write_recipe(train={"max_steps": 2})), runs_dir=tmp_path)
    said = terminal.getvalue()
    assert said.startswith("\rcompiling the training step (torch.compile; train.compile: false skips it)...")
    assert "\rstep 1/2 | loss " in said
