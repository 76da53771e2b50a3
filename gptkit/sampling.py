"""Autoregressive sampling from a trained GPT."""

import math

import torch

MAX_TOKENS = 10**7  # per sample: the output is allocated up front, and that is hours of generation on a CPU


@torch.inference_mode()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Extend `idx` (B, T) by `max_new_tokens`, sampling each from the softmax of the last logits.

    The context is a window of at most block_size tokens; once it is full it restarts from its
    last half, so positions never run past block_size. With a key/value cache (when `use_cache`
    and every attention layer supports one) the model is fed only the new token, and the kept half
    again when the window restarts; otherwise it recomputes the window for every token. Both paths
    see the same context, so they give the same tokens.
    """
    if idx.size(1) == 0:
        raise ValueError("idx must hold at least one token to continue")
    block_size = model.config.block_size
    keep = max(1, block_size // 2)
    cache = model.new_cache() if use_cache and model.supports_kv_cache else None
    B, n = idx.shape  # n: tokens so far
    out = torch.empty(B, n + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :n] = idx
    start = max(0, n - block_size)  # the window's first token
    fed = start  # tokens before this one are in the cache
    for _ in range(max_new_tokens):
        if n - start > block_size:
            start = fed = n - keep
            if cache is not None:
                cache = model.new_cache()
        logits, _ = model(out[:, fed:n], cache=cache)
        if cache is not None:
            fed = n
        out[:, n : n + 1] = next_token(logits[:, -1, :], temperature, top_k, generator)
        n += 1
    return out


def check_sampling(tokens: int, temperature: float, top_k: int | None) -> None:
    """ValueError for settings that cannot sample (a recipe's sample section refuses them too)."""
    if not (isinstance(tokens, int) and 0 <= tokens <= MAX_TOKENS):
        raise ValueError(f"tokens must be a whole number from 0 to {MAX_TOKENS:,}, got {tokens!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and not (isinstance(top_k, int) and top_k >= 1):
        raise ValueError(f"top_k must be None (all characters) or a whole number >= 1, got {top_k!r}")


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1) ids drawn from softmax(logits / temperature) over each row's `top_k` largest logits (B, V)."""
    ids = None
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k)  # (B, k)
    logits = logits.float()
    # Shifted so the largest is 0 before dividing: a tiny temperature then gives -inf, never +inf - +inf.
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    # An exponential race, the draw torch.multinomial makes for one sample (the same tokens for a seed),
    # without the checks that read the probabilities back to the host: no GPU sync per token.
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    choice = (probs / race).argmax(dim=-1, keepdim=True)  # (B, 1)
    return choice if ids is None else ids.gather(-1, choice)


def sample(model, vocab, prompt: str, tokens: int, temperature: float = 0.8, top_k: int | None = 40,
           seed: int | None = None, use_cache: bool = True) -> str:
    """`prompt` followed by `tokens` sampled characters, drawn at `temperature` (> 0) from the `top_k`
    likeliest (None: from all)."""
    check_sampling(tokens, temperature, top_k)
    device = next(model.parameters()).device
    if not prompt:  # the start of a speech in the classic format, where there is one
        prompt = "\n" if "\n" in vocab.stoi else vocab.itos[0]
    idx = vocab.encode(prompt).to(device)[None, :]  # (1, T)
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, idx, tokens, temperature, top_k, generator=g, use_cache=use_cache)
    finally:  # a Ctrl-C in a notebook leaves the model as it was
        model.train(was_training)
    return vocab.decode(out[0].tolist())
