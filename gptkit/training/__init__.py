"""Training: the loop, checkpoints, run folders and progress display."""

from .checkpoint import load_checkpoint, save_checkpoint
from .run import RunResult, train
from .trainer import Trainer

__all__ = ["RunResult", "Trainer", "load_checkpoint", "save_checkpoint", "train"]
