"""This process's place in a torchrun job, as the environment torchrun sets says it (WORLD_SIZE, RANK,
LOCAL_RANK). The one answer the command line, the device choice and the process group all go by;
free of torch, so that the command line can ask before torch is imported (see _entry.py)."""

import os


def under_torchrun() -> bool:
    """Whether this process is one of several of a torchrun job: a WORLD_SIZE that is unset, blank, 0 or 1
    is one process alone."""
    return os.environ.get("WORLD_SIZE", "").strip() not in ("", "0", "1")


def rank() -> int:
    """This process's rank in its torchrun job; 0 outside one."""
    return int(os.environ.get("RANK") or 0) if under_torchrun() else 0


def first_on_machine() -> bool:
    """Whether this process speaks for its machine: under torchrun, every process of a machine meets the
    same command line, mistake and Ctrl-C, and its local rank 0 alone says so. Outside one, a LOCAL_RANK
    left in the environment (by a job before) says nothing."""
    return not under_torchrun() or os.environ.get("LOCAL_RANK", "0") == "0"
