"""Training under torchrun: two CPU processes (gloo) take the same steps as one process on the same
global batch, and only rank 0 writes."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as td

from gptkit import load_recipe, train
from gptkit.errors import Interrupted, UserError
from gptkit.ranks import under_torchrun
from gptkit.training import distributed
from gptkit.training.distributed import Distributed, setup
from conftest import stop_at

ROOT = Path(__file__).resolve().parents[1]


def start_torchrun(*args, nproc: int = 2, entry: tuple = ("-m", "gptkit")) -> subprocess.Popen:
    """`python -m torch.distributed.run ... -m gptkit ARGS` (or another `entry`), in its own process group."""
    # --standalone: the rendezvous takes a port the system gives it, none that another process may take meanwhile
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *map(str, entry), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # so that a hang can be killed whole


def torchrun(*args, nproc: int = 2, entry: tuple = ("-m", "gptkit"), timeout: float = 120) -> subprocess.CompletedProcess:
    """Run torchrun to the end; killed with all its workers on timeout."""
    proc = start_torchrun(*args, nproc=nproc, entry=entry)
    cmd = proc.args
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s:\n{out}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out)


def losses(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


PROBE = """
import atexit
import json
import os

import torch.distributed.algorithms.ddp_comm_hooks.default_hooks as hooks

from gptkit.cli import main
from gptkit.data.dataset import CharDataset
from gptkit.training.distributed import Distributed

rows, buckets, reduced = [], set(), []
batch, wrap = CharDataset.batch, Distributed.wrap


def batch_recorded(self, starts, split="train"):
    if split == "train":
        rows.append(starts.tolist())
    return batch(self, starts, split)


def wrap_counted(self, model, device):  # counts DDP's gradient all-reduces, bucket by bucket
    ddp = wrap(self, model, device)

    def hook(state, bucket):
        buckets.add(bucket.index())
        reduced.append(bucket.index())
        return hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, hook)
    return ddp


def sockets() -> int | None:  # None without /proc
    if not os.path.isdir("/proc/self/fd"):
        return None
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            n += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # listdir's own descriptor, closed already
            pass
    return n


def gloo_threads() -> int | None:  # pt_gloo_runloop, gloo_tcp_loop
    if not os.path.isdir("/proc/self/task"):
        return None
    return sum("gloo" in open(f"/proc/self/task/{t}/comm").read() for t in os.listdir("/proc/self/task"))


def report():
    with open(os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.json"), "w") as f:
        json.dump({"rows": rows, "buckets": len(buckets), "all_reduces": len(reduced),
                   "sockets": sockets(), "gloo_threads": gloo_threads()}, f)


CharDataset.batch, Distributed.wrap = batch_recorded, wrap_counted
# Registered before gptkit joins the job, so run after gptkit's own exit handler (atexit is last in, first out).
atexit.register(report)
main(prog_name="gptkit")
"""


@pytest.mark.parametrize("micro_batch", [None, 2], ids=["whole-batch", "micro-batches"])
def test_two_processes_take_the_steps_of_one(tmp_path, write_recipe, micro_batch, monkeypatch):
    """Each process trains on its own half of every batch; gradients are all-reduced once per step,
    micro-batches or not; the losses and weights are those of one process on the whole batch."""
    recipe = write_recipe(train={"batch_size": 8, "max_steps": 5, "log_every": 1, "eval_every": 2, "eval_batches": 3,
                                 "micro_batch_size": micro_batch})
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    monkeypatch.setenv("PROBE_DIR", str(tmp_path))
    result = torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", entry=(script,))
    assert result.returncode == 0, result.stdout
    (run_dir,) = (tmp_path / "ddp").iterdir()  # rank 0 alone made a run folder...
    assert result.stdout.count("Finished:") == 1  # ...and reported
    assert " on cpu (fp32, 2 processes with gloo, 4 rows of each batch apiece" in result.stdout
    assert {"checkpoint.pt", "metrics.jsonl", "summary.json"} <= {p.name for p in run_dir.iterdir()}
    assert json.loads((run_dir / "summary.json").read_text())["processes"] == 2
    probes = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    from gptkit.data.dataset import CharDataset

    batch, single_rows = CharDataset.batch, []
    monkeypatch.setattr(CharDataset, "batch", lambda self, starts, split="train": (
        single_rows.append(starts.tolist()) if split == "train" else None, batch(self, starts, split))[1])
    single = train(load_recipe(recipe), runs_dir=tmp_path / "one", quiet=True).run_dir
    assert [a + b for a, b in zip(probes[0]["rows"], probes[1]["rows"])] == single_rows  # halves of each batch
    assert all(len(r) == 4 for probe in probes for r in probe["rows"]) and len(single_rows) == 5
    for probe in probes:  # no_sync: micro-batches but the last keep their gradients local
        assert probe["all_reduces"] == 5 * probe["buckets"], probe
        # A gloo thread left running into the interpreter's shutdown dropped a tensor there now and then, and
        # the process aborted ("terminate called without an active exception") after a good run.
        assert probe["sockets"] in (0, None) and probe["gloo_threads"] in (0, None), probe  # None: no /proc
    assert json.loads((single / "summary.json").read_text())["processes"] == 1
    assert len(losses(run_dir, "train_loss")) == 5
    assert losses(run_dir, "train_loss") == pytest.approx(losses(single, "train_loss"), abs=1e-5)
    assert losses(run_dir, "val_loss") == pytest.approx(losses(single, "val_loss"), abs=1e-5)
    two = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    one = torch.load(single / "checkpoint.pt", weights_only=True)["model"]
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, atol=1e-5, rtol=1e-4, msg=name)


def test_a_run_stopped_in_one_process_goes_on_in_two(tmp_path, write_recipe, monkeypatch):
    """The same global batch, taken apart otherwise: the steps after the resumption are close to an
    uninterrupted run's, not bit-identical."""
    from conftest import stop_at

    from gptkit.errors import Interrupted

    recipe = write_recipe(train={"batch_size": 8, "max_steps": 6, "log_every": 1})
    whole = train(load_recipe(recipe), runs_dir=tmp_path / "whole", quiet=True).run_dir
    with monkeypatch.context() as m:
        stop_at(m, "train_step", 3)
        with pytest.raises(Interrupted) as e:
            train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True)
    result = torchrun("run", "--resume", e.value.run_dir, "-q")
    assert result.returncode == 0, result.stdout
    summary = json.loads((e.value.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["processes"]) == ("finished", 6, 2), summary
    assert losses(e.value.run_dir, "train_loss") == pytest.approx(losses(whole, "train_loss"), abs=1e-4)


def worker_of_rank(agent: int, rank: int) -> int:
    """The pid of torchrun's worker process with RANK=rank."""
    for child in Path(f"/proc/{agent}/task/{agent}/children").read_text().split():
        env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        if f"RANK={rank}".encode() in env:
            return int(child)
    raise LookupError(f"no worker with RANK={rank} under {agent}")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, write_recipe):
    recipe = write_recipe(train={"batch_size": 8, "epochs": 10_000, "max_steps": None, "log_every": 1})
    proc = start_torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", "-q")
    try:
        deadline = time.monotonic() + 60
        while not any(m.stat().st_size for m in tmp_path.glob("ddp/*/metrics.jsonl")):  # until a step is logged
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no training step within 60 s"
            time.sleep(0.2)
        os.kill(worker_of_rank(proc.pid, 1), signal.SIGINT)  # rank 1 only: rank 0 must learn it from rank 1
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (run_dir,) = (tmp_path / "ddp").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["reason"].startswith("SIGINT received"), (summary, out)
    assert out.count("stopped: SIGINT received") == 1 and "SIGINT: stopping" not in out, out  # said once, by rank 0
    assert f"Run folder: {run_dir}  (continue: torchrun ... -m gptkit run --resume {run_dir})" in out, out
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["step"] == len(losses(run_dir, "train_loss")) > 0  # a common last step, saved once


SIGNAL_IN_EVALUATION = """
import os, signal
from gptkit.cli import main
from gptkit.data.dataset import CharDataset

batch = CharDataset.batch

def batch_that_signals_rank_1(self, starts, split="train"):
    if split == "val" and os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGTERM)  # during an evaluation, on one rank only
    return batch(self, starts, split)

CharDataset.batch = batch_that_signals_rank_1
main(prog_name="gptkit")
"""


def test_a_signal_to_one_rank_during_an_evaluation_stops_every_rank_at_the_same_step(tmp_path, write_recipe):
    # 24 validation windows: 12 per rank, in batches of 8 and 4. Rank 1 is signalled in its first;
    # had it abandoned the evaluation alone, rank 0's sum of the losses would meet rank 1's stop vote.
    recipe = write_recipe(train={"batch_size": 8, "max_steps": 6, "log_every": 1, "eval_every": 3, "eval_batches": 3})
    script = tmp_path / "signal_in_evaluation.py"
    script.write_text(SIGNAL_IN_EVALUATION)
    result = torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", "-q", entry=(script,))
    (run_dir,) = (tmp_path / "ddp").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", result.stdout
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3 and saved["trainer"]["state"]["eval_pending"]  # redone when the run resumes
    assert losses(run_dir, "val_loss") == []


def test_each_rank_takes_its_own_slice_of_the_batch():
    batch = torch.arange(8)
    assert [Distributed(r, 2).shard(batch).tolist() for r in (0, 1)] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert [Distributed(r, 3).split(torch.arange(7)).tolist() for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    single = Distributed()
    assert single.is_main and torch.equal(single.shard(batch), batch) and torch.equal(single.mean(batch), batch)


def test_a_batch_that_does_not_split_over_the_processes_is_refused():
    Distributed(0, 4).check_batch_size(32)
    with pytest.raises(UserError, match=r"train.batch_size 30 .* 4 processes; use a multiple of 4, e.g. 28, "
                                        r"or run 1, 2, 3, 5, 6, 10, 15, 30 processes"):
        Distributed(0, 4).check_batch_size(30)
    with pytest.raises(UserError, match=r"4 processes; run 1, 2, 3, 5, 6, 10, 15, 30 processes$"):
        Distributed(0, 4).check_batch_size(30, resuming=True)  # a resumed run cannot change its batch
    with pytest.raises(UserError, match=r"2 processes; use a multiple of 2, e.g. 2, or run 1 process$"):
        Distributed(0, 2).check_batch_size(1)


def test_every_rank_but_0_draws_from_a_stream_of_its_own():
    def stream_after(rank, seed=1337, step=0):
        torch.manual_seed(seed)
        Distributed(rank, 2).seed(seed, step)
        return torch.rand(4)

    torch.manual_seed(1337)
    single_process = torch.rand(4)
    assert torch.equal(stream_after(0), single_process) and torch.equal(stream_after(0, step=5), single_process)
    assert torch.equal(stream_after(1), stream_after(1))  # reproducible...
    streams = [stream_after(0), stream_after(1), stream_after(2), stream_after(1, step=5), stream_after(1, seed=1)]
    assert len({tuple(s.tolist()) for s in streams}) == len(streams)  # by rank, and by step (resumed) and seed


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    for key, value in dict(WORLD_SIZE="4", LOCAL_WORLD_SIZE="4", LOCAL_RANK="0", RANK="0", MASTER_ADDR="localhost",
                           MASTER_PORT="29500").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="started 4 processes on this machine, which has 2 CUDA devices; use "
                                        "--nproc_per_node 2 or fewer"):
        setup(torch.device("cuda"))


def test_a_stray_world_size_on_a_gpu_machine_is_not_taken_for_torchruns_processes(monkeypatch):
    """Said first, by every process (a stray LOCAL_RANK=1 would silence a machine's error): not torchrun's."""
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="^WORLD_SIZE=2 says this is one of several processes, but RANK, ") as e:
        setup(torch.device("cuda"))
    assert e.value.every_rank


@pytest.mark.parametrize("world_size", ["", " ", "0", "1"])
def test_a_world_size_the_command_line_takes_for_one_process_is_one_process_to_setup_too(monkeypatch, world_size):
    def join(*args, **kwargs):
        raise AssertionError("joined a process group")

    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setattr(td, "init_process_group", join)
    assert not under_torchrun()  # as the command line has it: gptkit sample and the like run
    assert setup(torch.device("cpu")) == (Distributed(), torch.device("cpu"))


def test_a_world_size_left_in_the_environment_is_one_error_not_torchs_traceback(monkeypatch, cli, write_recipe):
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = cli("run", write_recipe())
    assert result.exit_code == 2 and "but RANK, MASTER_ADDR and MASTER_PORT are not set" in result.output
    monkeypatch.setenv("RANK", "0")
    result = cli("run", write_recipe())
    assert result.exit_code == 2 and result.output == (
        "error: WORLD_SIZE=2 says this is one of several processes, but MASTER_ADDR and MASTER_PORT are not set, as "
        "torchrun sets them: start the processes with torchrun (torchrun --nproc_per_node N -m gptkit run ...), or "
        "unset WORLD_SIZE to train in one\n"), result.output


@pytest.mark.parametrize("rank, local_rank, said", [("1", "x", "LOCAL_RANK=x is"), ("abc", "0", "RANK=abc is"),
                                                     ("1", "", "LOCAL_RANK= is")])
def test_a_rank_that_is_no_number_is_one_error_not_a_traceback(monkeypatch, cli, write_recipe, rank, local_rank, said):
    for key, value in dict(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", RANK=rank,
                           LOCAL_RANK=local_rank).items():
        monkeypatch.setenv(key, value)
    result = cli("run", write_recipe())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"{said} not a process's number, as torchrun sets it: start the processes with torchrun" in result.output


class Counting(torch.nn.Module):
    """A plugin component with a buffer it updates as it trains (`seen`), beside a derived table."""

    def __init__(self, persistent: bool):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.register_buffer("table", torch.arange(2.0), persistent=False)  # derived, as positional tables are
        self.register_buffer("seen", torch.zeros(()), persistent=persistent)


@pytest.mark.parametrize("persistent", [True, False])
def test_ddp_syncs_buffers_only_for_a_model_with_a_persistent_one(monkeypatch, persistent):
    made = {}
    monkeypatch.setattr(distributed, "DistributedDataParallel", lambda model, **options: made.update(options))
    Distributed(0, 2).wrap(Counting(persistent), torch.device("cpu"))
    option = "forward_sync_buffers" if "forward_sync_buffers" in distributed.DDP_OPTIONS else "broadcast_buffers"
    assert made[option] is persistent  # unsynced, the ranks' counts would drift apart


RANK_STREAMS = """
import hashlib, os, sys, torch
from gptkit.cli import main

try:
    main(prog_name="gptkit")
finally:  # the same draws from the same seed would leave every rank in the same state
    print(f"rank {os.environ['RANK']} stream {hashlib.sha256(torch.get_rng_state().numpy()).hexdigest()}")
"""


def test_ranks_draw_different_dropout_masks(tmp_path, write_recipe):
    recipe = write_recipe(model={"dropout": 0.1, "attention": "naive"}, train={"batch_size": 8, "max_steps": 2})
    script = tmp_path / "rank_streams.py"
    script.write_text(RANK_STREAMS)
    result = torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", "-q", entry=(script,))
    streams = sorted(line.split()[-1] for line in result.stdout.splitlines() if " stream " in line)
    assert len(streams) == 2 and streams[0] != streams[1], result.stdout


OTHER_TEXT_ON_RANK_1 = """
import os
from gptkit.cli import main
from gptkit.training import run

load_dataset = run.load_dataset

def load_other_text_on_rank_1(data, *args, **kwargs):
    if os.environ["RANK"] == "1":  # a machine whose copy of the data file differs
        data = data.model_copy(update={"max_lines": 30})
    return load_dataset(data, *args, **kwargs)

run.load_dataset = load_other_text_on_rank_1
main(prog_name="gptkit")
"""


def test_processes_that_read_different_text_are_stopped(tmp_path, write_recipe):
    script = tmp_path / "other_text.py"
    script.write_text(OTHER_TEXT_ON_RANK_1)
    result = torchrun("run", write_recipe(train={"batch_size": 8}), "--runs-dir", tmp_path / "ddp", "-q",
                      entry=(script,))
    assert result.returncode != 0
    assert result.stdout.count("error: the 2 processes disagree on the training text; every machine needs the "
                               "same file at data.path") == 1, result.stdout
    assert not (tmp_path / "ddp").exists()


A_SET_ON_RANK_1 = """
import os, sys
from gptkit.cli import main

if os.environ["RANK"] == "1":  # one machine's command has a --set the other's lacks
    sys.argv += ["--set", "train.lr=0.1", "--set", "model.n_layer=3", "--set", "train.micro_batch_size=2"]
main(prog_name="gptkit")
"""


def test_processes_given_different_settings_are_stopped_naming_them(tmp_path, write_recipe):
    """Before anything trains: else another lr trains silently, another n_layer is DDP's traceback, another
    max_steps a collective mismatch that aborts one rank. A machine's own micro-batch size is not refused."""
    script = tmp_path / "set_on_rank_1.py"
    script.write_text(A_SET_ON_RANK_1)
    result = torchrun("run", write_recipe(train={"batch_size": 8, "lr": 0.002}), "--runs-dir", tmp_path / "ddp", "-q",
                      entry=(script,))
    assert result.returncode != 0  # (torchrun's own, whatever its workers' are)
    assert result.stdout.count("error: the 2 processes disagree on the recipe: model.n_layer: 2 on rank 0, 3 on rank 1; "
                               "train.lr: 0.002 on rank 0, 0.1 on rank 1; every process must run the same recipe with "
                               "the same --set") == 1, result.stdout
    assert not (tmp_path / "ddp").exists()


def test_a_batch_changed_on_resuming_under_torchrun_is_refused_as_a_change_not_for_its_split(tmp_path, write_recipe):
    run = train(load_recipe(write_recipe(train={"batch_size": 8, "max_steps": 2})), runs_dir=tmp_path,
                quiet=True).run_dir
    result = torchrun("run", "--resume", run, "--set", "train.batch_size=7", "--set", "train.max_steps=4", "-q")
    assert result.returncode != 0 and result.stdout.count("error: ") == 1, result.stdout
    assert "train.batch_size: 8 -> 7" in result.stdout and "split evenly" not in result.stdout, result.stdout


OLDEST_RUN_ON_RANK_1 = """
import os
from gptkit.cli import main
from gptkit.training import resume

if os.environ["RANK"] == "1":  # a machine that sees the runs' times otherwise (a clock, a copy of the folder)
    modified = resume._modified
    resume._modified = lambda folder: -modified(folder)
main(prog_name="gptkit")
"""


def test_resume_auto_that_chooses_other_runs_on_two_processes_is_stopped(tmp_path, monkeypatch, write_recipe):
    """Two unfinished runs stopped at the same step: were only the step compared, each process would train on
    from another run's weights."""
    path = write_recipe(train={"batch_size": 8, "max_steps": 4})
    for _ in range(2):
        with monkeypatch.context() as m, pytest.raises(Interrupted):
            stop_at(m, "train_step", 2)
            train(load_recipe(path), runs_dir=tmp_path / "runs", quiet=True)
    script = tmp_path / "oldest_on_rank_1.py"
    script.write_text(OLDEST_RUN_ON_RANK_1)
    result = torchrun("run", path, "--runs-dir", tmp_path / "runs", "--resume", "auto", "-q", entry=(script,))
    assert result.returncode != 0
    assert result.stdout.count("error: the 2 processes disagree on the run to resume and its step; --resume needs the "
                               "run folder on a file system every machine sees, and --resume auto may choose another "
                               "run on each: name the run to resume") == 1, result.stdout


def test_a_user_error_under_torchrun_is_printed_once(tmp_path, write_recipe):
    result = torchrun("run", write_recipe(train={"batch_size": 7}), "--runs-dir", tmp_path / "ddp", "-q")
    assert result.returncode != 0
    assert len(re.findall(r"error: \S+/tiny.yaml:\d+: train.batch_size 7 is the global batch", result.stdout)) == 1, \
        result.stdout


DISK_FULL_ON_RANK_0 = """
import atexit, errno, os, sys, time
from gptkit.cli import main
from gptkit.training import run

def disk_full(path, *args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

if os.environ["RANK"] == "0":  # the disk only rank 0 writes to is full
    setattr(run, sys.argv.pop(1), disk_full)
    # and it ends slowly (a busy machine): its connections close at gptkit's exit handler, which runs first
    atexit.register(time.sleep, 1)
else:
    sys.argv.pop(1)
main(prog_name="gptkit")
"""


@pytest.mark.parametrize("fails", ["write_text", pytest.param("save_checkpoint", marks=pytest.mark.slow)])  # before training (recipe.yaml); at the first save
def test_a_failure_of_rank_0_alone_is_said_once_and_the_others_stop_quietly(tmp_path, write_recipe, fails):
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_ON_RANK_0)
    recipe = write_recipe(train={"batch_size": 8, "checkpoint_every": 2})
    out = torchrun(fails, "run", recipe, "--runs-dir", tmp_path / "ddp", "-q", entry=(script,)).stdout
    assert out.count("No space left on device") == 1, out  # said by rank 0
    assert "[rank1]" not in out and "Connection closed" not in out, out  # no traceback from rank 1 meeting rank 0 gone
    # Rank 1 waits for rank 0's process to end, not just its connection, so that torchrun names rank 0
    # (the failed save's exit code) as the cause
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 4\b", out.split("Root Cause")[-1]), out
    if fails == "save_checkpoint":
        (run_dir,) = (tmp_path / "ddp").iterdir()
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"
    else:
        assert not (tmp_path / "ddp").exists()  # nor the runs folder made for it


FAILS = """
import os
import torch
from gptkit.components import register
from gptkit.components.feedforward import MLP

@register("feedforward", "fails")
class Fails(MLP):
    calls = 0

    def forward(self, x):  # (the checks before training run without gradients)
        if self.training and torch.is_grad_enabled() and os.environ["RANK"] in {ranks!r}:
            Fails.calls += 1
            if Fails.calls > 4 * 2 * 4:  # in step 5: 2 layers, 4 one-row micro-batches a step on each rank
                raise ValueError("boom")
        return super().forward(x)
"""


def test_a_plugin_failing_on_one_rank_is_said_by_it_and_the_others_stop_without_a_traceback(tmp_path, write_recipe):
    (tmp_path / "fails.py").write_text(FAILS.format(ranks=["1"]))
    recipe = write_recipe(imports=["fails.py"], model={"feedforward": "fails"},
                          train={"batch_size": 8, "micro_batch_size": 1, "max_steps": 8, "checkpoint_every": 2})
    out = torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", "-q").stdout
    assert out.count("error (rank 1): feedforward 'fails' from ") == 1 and "ValueError: boom" in out, out
    assert out.count("stopped: another process of this torchrun job ended at step 5 (its connection closed)") == 1, out
    assert "the last checkpoint (step 4) is intact" in out, out
    assert "[rank0]" not in out and "[rank1]" not in out and "pair.cc" not in out, out  # no worker's traceback
    (run_dir,) = (tmp_path / "ddp").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("another process") and summary["resumable"]
    assert summary["checkpoint_step"] == 4


def test_a_plugin_failing_on_every_rank_is_said_once(tmp_path, write_recipe):
    (tmp_path / "fails.py").write_text(FAILS.format(ranks=["0", "1"]))
    recipe = write_recipe(imports=["fails.py"], model={"feedforward": "fails"},
                          train={"batch_size": 8, "micro_batch_size": 1, "max_steps": 8})
    out = torchrun("run", recipe, "--runs-dir", tmp_path / "ddp", "-q").stdout
    assert out.count("ValueError: boom") == 1 and "error: feedforward 'fails' from " in out, out
    assert "another process" not in out and "[rank1]" not in out, out


TRAIN_MODEL = """
import sys
import gptkit

gptkit.train_model(sys.argv[1], save_path=sys.argv[2], runs_dir=sys.argv[3], quiet=True)
print("returned", flush=True)
"""


def test_train_model_under_torchrun_saves_on_rank_0_alone(tmp_path, write_recipe):
    script = tmp_path / "train_model.py"
    script.write_text(TRAIN_MODEL)
    saved = tmp_path / "out" / "model.pt"
    result = torchrun(write_recipe(train={"batch_size": 8}), saved, tmp_path / "ddp", entry=(script,))
    assert result.returncode == 0 and result.stdout.count("returned") == 2, result.stdout
    assert torch.load(saved, weights_only=True)["step"] == 6


EXIT_CODES = """
try:
    main(prog_name="gptkit")
except SystemExit as e:  # what this process exits with, as torchrun does not say it when it is signalled itself
    print(f"rank {os.environ['RANK']} exits with {e.code}", flush=True)
    raise
"""

SIGNAL_WHILE_RANK_0_SETS_UP = """
import os, signal, sys, time
from pathlib import Path
from gptkit.cli import main
from gptkit.training import run
from gptkit.training.distributed import Distributed

remove_leftovers, any_rank = run.remove_leftovers, Distributed.any_rank
sig, waiting = getattr(signal, sys.argv.pop(1)), Path(sys.argv.pop(1))

def signalled_while_setting_up(run_dir):  # as on a slow disk: torchrun is signalled while rank 0 sets up its folder
    deadline = time.monotonic() + 60
    while not waiting.exists() and time.monotonic() < deadline:  # until rank 1 waits for the folder
        time.sleep(0.05)
    time.sleep(0.2)
    os.kill(os.getppid(), sig)  # torchrun's agent, which passes it on to every process
    time.sleep(2)
    remove_leftovers(run_dir)

def says_it_waits(self, flag):  # rank 1's first vote: the wait for rank 0's folder
    waiting.touch()
    return any_rank(self, flag)

if os.environ["RANK"] == "0":
    run.remove_leftovers = signalled_while_setting_up
else:
    Distributed.any_rank = says_it_waits
""" + EXIT_CODES


@pytest.mark.parametrize("sig", ["SIGTERM", pytest.param("SIGINT", marks=pytest.mark.slow)])
def test_a_signal_while_rank_0_sets_up_the_run_folder_stops_the_run_at_its_first_step(tmp_path, write_recipe, sig):
    # Rank 1, waiting for the folder, stops with rank 0 at the first step boundary, as one process does;
    # it used to die there (SIGTERM) or stop alone (SIGINT), and rank 0 met its closed connection.
    script = tmp_path / "signal_in_setup.py"
    script.write_text(SIGNAL_WHILE_RANK_0_SETS_UP)
    out = torchrun(sig, tmp_path / "rank-1-waits", "run", write_recipe(train={"batch_size": 8}), "--runs-dir",
                   tmp_path / "ddp", "-q", entry=(script,)).stdout
    (run_dir,) = (tmp_path / "ddp").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["reason"].startswith(f"{sig} received"), (summary, out)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 1, out
    assert out.count(f"stopped: {sig} received: stopped at step 1 with a checkpoint saved") == 1, out
    assert out.count(f"{sig}: stopping after this step") == 1 and "interrupted\n" not in out, out
    code = 128 + getattr(signal, sig)
    assert f"rank 0 exits with {code}" in out and f"rank 1 exits with {code}" in out, out
    assert "[rank0]" not in out and "[rank1]" not in out and "Connection closed" not in out, out


RANK_1_KILLED = """
import atexit, os, signal, sys, time
from gptkit.cli import main
from gptkit.training.distributed import Distributed
from gptkit.training.trainer import Trainer

when = sys.argv.pop(1)
if os.environ["RANK"] == "1":
    if when == "setup":  # as rank 1 starts waiting for rank 0's run folder
        Distributed.any_rank = lambda self, flag: os.kill(os.getpid(), signal.SIGKILL)
    else:  # in its third training step
        train_step = Trainer.train_step

        def killed_in_step_3(self, *args):
            if self.state.step == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            return train_step(self, *args)

        Trainer.train_step = killed_in_step_3
else:  # rank 0 ends slowly (a slow disk, a busy machine): torchrun's SIGTERM, sent as rank 1 dies, finds it still there
    atexit.register(time.sleep, 2)
""" + EXIT_CODES


@pytest.mark.parametrize("when", [pytest.param("setup", marks=pytest.mark.slow), "training"])
def test_rank_0_says_once_that_another_process_was_killed_and_ends_with_exit_code_1(tmp_path, write_recipe, when):
    # Rank 0 ignores torchrun's SIGTERM from then on to its exit, which used to kill it (exit code -15)
    # after its message; a peer lost while rank 0 set up its folder used to be a traceback and a run
    # recorded as failed with gloo's error.
    script = tmp_path / "rank_1_killed.py"
    script.write_text(RANK_1_KILLED)
    recipe = write_recipe(train={"batch_size": 8, "max_steps": 8, "checkpoint_every": 2})
    out = torchrun(when, "run", recipe, "--runs-dir", tmp_path / "ddp", "-q", entry=(script,)).stdout
    said = ("before training started" if when == "setup" else
            "at step 3 (its connection closed); it says why itself if it could, and the last checkpoint (step 2) is intact")
    assert out.count(f"stopped: another process of this torchrun job ended {said}") == 1, out
    assert "rank 0 exits with 1" in out and "SIGTERM" not in out.split("Failures:")[-1], out
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 1\b", out.split("Root Cause")[0]), out
    assert "[rank0]" not in out and "Connection closed" not in out, out
    (run_dir,) = (tmp_path / "ddp").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["reason"].startswith("another process"), summary
    assert summary["checkpoint_step"] == (None if when == "setup" else 2), summary


INTERRUPTED_BEFORE_TRAINING = """
import os, signal
from gptkit.cli import main
from gptkit.training import run

load_dataset = run.load_dataset

def interrupted(*args, **kwargs):  # a Ctrl-C to the job before its run starts: every process is interrupted
    os.kill(os.getpid(), signal.SIGINT)
    return load_dataset(*args, **kwargs)

run.load_dataset = interrupted
""" + EXIT_CODES


def test_what_every_process_would_say_before_the_run_starts_is_said_once(tmp_path, write_recipe):
    recipe = write_recipe(train={"batch_size": 8, "max_steps": 2})
    stopped = train(load_recipe(recipe), runs_dir=tmp_path / "runs", quiet=True).run_dir
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED_BEFORE_TRAINING)
    out = torchrun("run", "--resume", stopped, "--runs-dir", tmp_path / "elsewhere", entry=(script,)).stdout
    assert out.count("note: --runs-dir ") == 1, out
    assert out.splitlines().count("interrupted") == 1, out
    assert "rank 0 exits with 130" in out and "rank 1 exits with 130" in out, out


def test_a_run_resumed_with_another_number_of_processes_keeps_the_earlier_count(tmp_path, write_recipe):
    from gptkit import load_recipe, train

    run = train(load_recipe(write_recipe(train={"max_steps": 2})), runs_dir=tmp_path, quiet=True).run_dir
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "processes": 2}))  # as a 2-process torchrun session's
    resumed = train(load_recipe(run / "recipe.yaml", ["train.max_steps=3"]), quiet=True, resume=run).summary
    assert resumed["processes"] == 1 and resumed["processes_history"] == [2]


def test_a_process_whose_peers_never_join_says_it_waits_and_stops_at_once_on_ctrl_c(tmp_path, write_recipe):
    """Joining waits in torch's C++ for up to 30 minutes, where Python's Ctrl-C handling cannot run."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    note = f"note: rank 0 is waiting for the other processes of its job (WORLD_SIZE=2) to join at 127.0.0.1:" \
           f"{env['MASTER_PORT']}; torchrun starts them all\n"
    with open(tmp_path / "stderr", "w") as stderr:
        p = subprocess.Popen([sys.executable, "-m", "gptkit", "run", str(write_recipe()), "--runs-dir",
                              str(tmp_path / "runs")], env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90  # a few seconds (JOIN_NOTE_AFTER) once gptkit and torch are imported
    while note not in (tmp_path / "stderr").read_text() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    p.wait(timeout=20)  # at once, not after torch's timeout
    err = (tmp_path / "stderr").read_text()
    assert p.returncode == -signal.SIGINT and note in err, (p.returncode, err)
    assert not (tmp_path / "runs").exists()
