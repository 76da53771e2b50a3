"""One training run from a recipe: data, model, run folder, training, checkpoint, sample, summary."""

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
import yaml

from ..data.dataset import CharDataset, load_dataset
from ..errors import UserError
from ..io import write_json, write_text
from ..model import GPT, build_model
from ..recipe import Recipe
from ..sampling import sample
from . import distributed
from .checkpoint import save_checkpoint
from .trainer import Trainer


@dataclass
class RunResult:
    model: GPT
    dataset: CharDataset
    run_dir: Path | None  # None on every process of a torchrun job but rank 0
    summary: dict


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"train.device: {name} was asked for, but no such CUDA device is visible; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("train.device: mps was asked for, but it is not available here; use auto or cpu")
    return device


def new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = runs_dir / (f"{name}-{stamp}" + (f"-{n}" if n else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise UserError(f"cannot create a run folder in {runs_dir}: {e.strerror}; pass --runs-dir "
                            "with a writable folder") from None
    raise UserError(f"too many runs named {name} in {runs_dir} this second")


def train(recipe: Recipe, runs_dir: str | Path = "runs", quiet: bool = False) -> RunResult:
    """Train the model `recipe` describes; everything the run produces lands in a new run folder."""
    dist, device = distributed.setup(resolve_device(recipe.train.device))  # one process unless under torchrun
    dist.check_batch_size(recipe.train.batch_size)
    dataset = load_dataset(recipe.data, recipe.model.block_size)
    if dataset.steps_per_epoch(recipe.train.batch_size) == 0:
        raise UserError(f"train.batch_size {recipe.train.batch_size} is larger than the "
                        f"{dataset.windows_per_epoch:,} training windows per epoch; lower train.batch_size "
                        "or data.stride, or use a longer text")
    torch.manual_seed(recipe.seed)  # the same on every rank: the same initial weights
    model = build_model(recipe.model, dataset.vocab_size).to(device)
    dataset.to(device)
    if not dist.is_main:  # other ranks only train; rank 0 prints and writes the run folder
        Trainer(recipe, model, dataset, device, quiet=True, dist=dist).fit()
        return RunResult(model, dataset, None, {})
    run_dir = new_run_dir(Path(runs_dir), recipe.name)  # only once every input has been checked
    write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True))
    log = print if not quiet else (lambda *a, **k: None)
    log(f"Run folder: {run_dir}")
    log(f"{model.num_params():,} parameters on {device}; {dataset.vocab_size} characters, "
        f"{len(dataset.train):,} training and {len(dataset.val):,} validation tokens")

    with open(run_dir / "metrics.jsonl", "w", encoding="utf-8") as metrics:
        def on_metrics(record: dict) -> None:
            metrics.write(json.dumps(record) + "\n")

        trainer = Trainer(recipe, model, dataset, device, on_metrics=on_metrics, quiet=quiet, dist=dist)
        state = trainer.fit()

    save_checkpoint(run_dir / "checkpoint.pt", model, recipe.to_dict(), dataset.itos, step=state.step)
    sp = recipe.sample
    write_text(run_dir / "samples.txt", sample(model, dataset.vocab, sp.prompt, sp.tokens, sp.temperature, sp.top_k, recipe.seed))
    summary = {
        "name": recipe.name,
        "status": "finished",
        "final_train_loss": state.train_loss,
        "final_val_loss": state.val_loss,
        "best_val_loss": state.best_val_loss,
        "params": model.num_params(),
        "steps": state.step,
        "epochs": state.epoch + 1,
        "tokens": state.tokens,
        "tokens_per_s": state.tokens / state.seconds if state.seconds else None,
        "wall_seconds": state.seconds,
        "device": str(device),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / "summary.json", summary)
    return RunResult(model, dataset, run_dir, summary)
