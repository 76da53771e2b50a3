"""A trained model's loss on any text: how well it predicts each character from those before it."""

import torch
import torch.nn.functional as F

from .sampling import _whole, check_model, check_vocab, one_newline


def text_loss(model, vocab, text: str, batch_size: int = 32) -> float:
    """Mean cross-entropy, in nats per character, of `model` predicting every character of `text` but the
    first from those before it (its exp is the perplexity; divided by ln 2, bits per character). The text
    is cut into windows of block_size predictions, the context starting afresh in each, as a run's
    validation windows do; a last, shorter part is predicted with the block_size characters before its
    end as context. `batch_size` windows at a time, in evaluation mode, without gradients; the model is
    left in the mode it was in. Line endings are read as a training text's are (\\r\\n is \\n)."""
    check_model(model)
    check_vocab(model, vocab)
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    size = _whole(batch_size)
    if size is None or size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    ids = vocab.encode(one_newline(text))
    n, T = len(ids) - 1, model.config.block_size  # n predictions
    if n < 1:
        raise ValueError(f"text must hold at least 2 characters (the first is context only), got {len(ids)}")
    device = next(model.parameters()).device
    full = n // T
    x, y = ids[: full * T].view(full, T), ids[1 : full * T + 1].view(full, T)  # (full, T)
    was_training = model.training
    model.eval()
    total = 0.0  # in Python's double: float64 tensors are not on every device (MPS)
    try:
        with torch.inference_mode():
            for i in range(0, full, size):
                logits, _ = model(x[i : i + size].to(device))  # (b, T, V)
                total += F.cross_entropy(logits.flatten(0, 1).float(), y[i : i + size].flatten().to(device),
                                         reduction="sum").item()
            rest = n - full * T
            if rest:  # the text's end, shorter than a window: as much context before it as a window holds
                start = max(0, n - T)
                logits, _ = model(ids[start:n][None].to(device))  # (1, n - start, V)
                total += F.cross_entropy(logits[0, -rest:].float(), ids[n - rest + 1 : n + 1].to(device),
                                         reduction="sum").item()
    finally:
        model.train(was_training)
    return total / n
