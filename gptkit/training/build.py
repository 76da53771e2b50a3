"""A run's model, built on its training device (by `gptkit run`, ablations and the bench)."""

import torch

from ..diagnose import check_causal, check_forward
from ..errors import OutOfMemory, UserError, out_of_memory, out_of_memory_as, out_of_memory_on
from ..model import GPT, build_model
from ..recipe import Recipe


def build_checked(recipe: Recipe, vocab_size: int, device: torch.device, cache: bool = True) -> tuple[GPT, str | None]:
    """The model a run of `recipe` starts from: weights drawn from `recipe.seed` (the same on every rank,
    in every run and in the bench), on `device`, then check_forward's pass, so that a component's bug is
    one error naming it before anything trains, as is a plugin's that lets the model see the future
    (check_causal). Returns the model and check_forward's cache warning."""
    torch.manual_seed(recipe.seed)
    model = build_model_on(recipe.model, vocab_size, device)
    with out_of_memory_as(lambda e: every_rank(OutOfMemory(
            f"out of memory on {out_of_memory_on(e, device)} in the checks before training (forward passes of "
            "a few tokens, and of one sequence of a block); free some memory (close other programs that use it) "
            "and try again"))):
        warning = check_forward(model, recipe.model, cache)
        check_causal(model, recipe.model)
        return model, warning


def every_rank(error: UserError) -> UserError:
    """`error`, said by every torchrun process (each one's own machine or GPU ran out), not rank 0's alone."""
    error.every_rank = True
    return error


def build_model_on(model, vocab_size: int, device: torch.device) -> GPT:
    """build_model on `device`; a model too large for its memory is one error saying how large."""
    try:
        return build_model(model, vocab_size).to(device)
    except Exception as e:
        if not out_of_memory(e):  # a component's own error is its own (see ComponentSpec.build)
            raise
    try:
        with torch.device("meta"):  # counted without memory
            size = f"{build_model(model, vocab_size).num_params():,} parameters"
    except Exception:  # a component that cannot be built on the meta device
        size = "its sizes"
    raise every_rank(UserError(f"the model does not fit in memory on {device}: {size} (model.n_layer {model.n_layer}, "
                               f"n_embd {model.n_embd}); make it smaller"))
