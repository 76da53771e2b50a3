"""This process's place in a torchrun job, as the environment torchrun sets says it (WORLD_SIZE, RANK,
LOCAL_RANK). The one answer the command line, the device choice and the process group all go by;
free of torch, so that the command line can ask before torch is imported (see _entry.py)."""

import os

from .errors import UserError


def under_torchrun() -> bool:
    """Whether this process is one of several of a torchrun job: a WORLD_SIZE that is unset, blank, 0 or 1
    is one process alone."""
    return os.environ.get("WORLD_SIZE", "").strip() not in ("", "0", "1")


def rank() -> int:
    """This process's rank in its torchrun job; 0 outside one (or before stray_world_size refuses a RANK that
    is no number)."""
    value = os.environ.get("RANK", "").strip()
    return int(value) if under_torchrun() and value.isdigit() else 0


def first_on_machine() -> bool:
    """Whether this process speaks for its machine: under torchrun, every process of a machine meets the
    same command line, mistake and Ctrl-C, and its local rank 0 alone says so. Outside one, a LOCAL_RANK
    left in the environment (by a job before) says nothing, even beside a stray WORLD_SIZE."""
    return not under_torchrun() or bool(unset_by_torchrun()) or os.environ.get("LOCAL_RANK", "0") == "0"


def unset_by_torchrun() -> list[str]:
    """What torchrun sets for every process of a job that is not set here: all of it outside one."""
    return [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k, "").strip()]


def stray_world_size(fix: str) -> UserError | None:
    """The error for a WORLD_SIZE of several processes that torchrun did not start (a WORLD_SIZE left in the
    environment: RANK, MASTER_ADDR or MASTER_PORT not set), or of no count at all (-2), ending in `fix`;
    None otherwise. Said by every process: none other is there to say it for them."""
    missing, size = unset_by_torchrun(), os.environ.get("WORLD_SIZE", "").strip()
    if not under_torchrun():
        return None
    if size.isdigit() and not missing:  # torchrun's, but for a RANK or LOCAL_RANK that is no process's number
        bad = [f"{k}={os.environ[k]}" for k in ("RANK", "LOCAL_RANK")
               if k in os.environ and not os.environ[k].strip().isdigit()]
        if not bad:
            return None
        error = UserError(f"{' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a process's number, as "
                          f"torchrun sets {'it' if len(bad) == 1 else 'them'}: {fix}")
    elif not size.isdigit():  # -2, abc: no count of processes at all
        error = UserError(f"WORLD_SIZE={size} is not a number of processes, as torchrun sets it: {fix}")
    else:
        names = " and ".join(filter(None, (", ".join(missing[:-1]), missing[-1])))  # RANK, MASTER_ADDR and ...
        error = UserError(f"WORLD_SIZE={size} says this is one of several processes, but {names} "
                          f"{'is' if len(missing) == 1 else 'are'} not set, as torchrun sets them: {fix}")
    error.every_rank = True
    return error
