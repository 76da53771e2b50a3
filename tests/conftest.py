import os

# Before torch is imported, and inherited by the CLI processes tests start (whose results some tests
# compare bit for bit with in-process runs): the tiny test models run fastest on one thread, and two
# threads per process on a loaded 2-core machine made the suite several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import random
import signal
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import settings

from gptkit.cli import main
from gptkit.registry import forget_plugins

# The same examples on every run, so that CI's verdict is the code's, not the draw's; search anew with
# HYPOTHESIS_PROFILE=explore.
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))

WORDS = ("the king and queen speak of love and war to all who hear my lord good night sweet "
         "prince what say you now come hither fair lady I pray thee tell me true").split()


def make_text(n_lines: int = 600, seed: int = 0) -> str:
    """A small, deterministic play-like text: `SPEAKER:` lines, speeches, blank lines."""
    rng = random.Random(seed)
    lines = []
    while len(lines) < n_lines:
        lines.append(rng.choice(["KING", "QUEEN", "LORD", "LADY"]) + ":")
        for _ in range(rng.randint(1, 3)):
            lines.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))).capitalize() + ".")
        lines.append("")
    return "\n".join(lines) + "\n"


# What torch's CPU allocator raises when the OS refuses memory (torch 2.13, Linux).
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
           "to allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)")


def breaks_after(after: int, how: str) -> type:
    """A feedforward that breaks from its training step `after + 1` on: its output turns NaN (how="nan":
    a run that diverges), its forward raises (how="raise": a plugin's bug met in training) or the machine
    runs out of memory in it (how="oom")."""
    from gptkit.components.feedforward import MLP

    class BreaksAfter(MLP):
        def __init__(self, config, params):
            super().__init__(config, params)
            self.steps = 0

        def forward(self, x):
            self.steps += self.training and torch.is_grad_enabled()  # the checks before training have no gradients
            if self.steps <= after:
                return super().forward(x)
            if how == "raise":
                raise ValueError("out of ideas\nsecond line")
            if how == "oom":
                raise RuntimeError(CPU_OOM)
            return super().forward(x) * float("nan")

    return BreaksAfter


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


TINY_MODEL = {"n_embd": 32, "n_head": 4, "n_layer": 2, "block_size": 32}
TINY_TRAIN = {"batch_size": 8, "epochs": 1, "max_steps": 6, "log_every": 2, "device": "cpu"}


def tiny_recipe(folder: Path, corpus: Path, model=None, train=None, name="tiny", **top) -> Path:
    """Write folder/NAME.yaml: a tiny recipe on `corpus`, with `model` and `train` fields changed."""
    recipe = {
        "name": name,
        "seed": 0,
        "data": {"path": str(corpus)},
        "model": {**TINY_MODEL, **(model or {})},
        "train": {**TINY_TRAIN, **(train or {})},
        "sample": {"prompt": "KING:", "tokens": 20},
        **top,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def trainer_for(path, *overrides):
    """A Trainer on the CPU for the recipe at `path` (gradient clipping off unless an override sets it),
    and the first epoch's window starts."""
    from gptkit.data.dataset import load_dataset
    from gptkit.model import build_model
    from gptkit.recipe import load_recipe
    from gptkit.training.trainer import Trainer

    recipe = load_recipe(path, ["train.grad_clip=null", *overrides])
    dataset = load_dataset(recipe.data, recipe.model.block_size)
    torch.manual_seed(0)
    model = build_model(recipe.model, dataset.vocab_size)
    return Trainer(recipe, model, dataset, torch.device("cpu"), quiet=True), dataset.epoch_starts(0, 0)


def gradients_and_loss(trainer, starts):
    """The loss of one step and the gradients the optimizer was about to apply."""
    grads = []
    trainer.optimizer.step = lambda: grads.extend(p.grad.clone() for p in trainer.model.parameters())
    loss, _ = trainer.train_step(starts, 0, 1e-3)
    return grads, loss


@pytest.fixture
def write_recipe(tmp_path, corpus):
    """write_recipe(model={...}, train={...}, **top) -> path of a tiny recipe on the test corpus."""
    return lambda **kwargs: tiny_recipe(tmp_path, corpus, **kwargs)


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """cli("run", recipe, ...) -> click Result; run in tmp_path, so runs without --runs-dir land in tmp_path/runs."""
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def stop_at(monkeypatch, method: str, step: int):
    """Ask the trainer to stop, as the signal handler would, when Trainer.`method` ends at `step`."""
    from gptkit.training.trainer import Trainer

    original = getattr(Trainer, method)

    def patched(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.state.step + (method == "train_step") == step:
            self.stop_signal = signal.SIGTERM
        return out

    monkeypatch.setattr(Trainer, method, patched)


# The tests send SIGINT as a terminal's Ctrl-C would. A suite started as a background job (`pytest &` in a
# script) inherits SIGINT ignored, which gptkit leaves ignored, as programs do: its tests would then fail.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _local_files_forgotten():
    """The local files a test runs are not left run for the next (errors name the local files run in the
    process, as a command's are its own)."""
    before = {m for m in sys.modules if m.startswith("gptkit_local_")}
    yield
    for module in {m for m in sys.modules if m.startswith("gptkit_local_")} - before:
        del sys.modules[module]


@pytest.fixture
def temporary_component(monkeypatch):
    """temporary_component(kind, name, cls): registered for this test only."""
    from gptkit.registry import Entry, registry

    def add(kind, name, cls):
        monkeypatch.setitem(registry(kind)._entries, name, Entry(kind, name, cls, "test"))

    return add


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registrations made by local files (a recipe's imports) during the test are forgotten after it."""
    import sys

    from gptkit.registry import kinds, registry

    for kind in kinds():
        monkeypatch.setattr(registry(kind), "_entries", dict(registry(kind)._entries))
        monkeypatch.setattr(registry(kind), "_clashes", dict(registry(kind)._clashes))  # what `gptkit list` found
    before = set(sys.modules)
    yield
    for module in set(sys.modules) - before:
        if module.startswith("gptkit_local_"):
            del sys.modules[module]


@pytest.fixture
def install(tmp_path, monkeypatch):
    """install(dist, version, {group: {name: value}}, {module: source}, site=name): a distribution in a
    site folder on sys.path, found by importlib.metadata like any pip-installed package."""
    modules = []

    def install(dist, version="1.0", entry_points=None, sources=None, site="site"):
        where = tmp_path / site
        if not where.exists():
            where.mkdir()
            monkeypatch.syspath_prepend(str(where))
        info = where / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items())
            for group, eps in (entry_points or {}).items()))
        for module, source in (sources or {}).items():
            (where / f"{module}.py").write_text(textwrap.dedent(source))
            modules.append(module)
        forget_plugins()

    yield install
    for module in modules:
        sys.modules.pop(module, None)
    forget_plugins()


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine without CUDA, on any machine: the errors for a GPU asked for and not there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
