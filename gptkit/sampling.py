"""Autoregressive sampling from a trained GPT."""

import torch


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
    block_size = model.config.block_size
    keep = max(1, block_size // 2)
    cache = model.new_cache() if use_cache and model.supports_kv_cache else None
    start = max(0, idx.size(1) - block_size)  # the window's first token
    fed = start  # tokens before this one are in the cache
    for _ in range(max_new_tokens):
        if idx.size(1) - start > block_size:
            start = fed = idx.size(1) - keep
            if cache is not None:
                cache = model.new_cache()
        logits, _ = model(idx[:, fed:], cache=cache)
        if cache is not None:
            fed = idx.size(1)
        logits = logits[:, -1, :].float() / temperature  # (B, V)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx


def sample(model, vocab, prompt: str, tokens: int, temperature: float = 0.8, top_k: int | None = 40,
           seed: int | None = None, use_cache: bool = True) -> str:
    """`prompt` followed by `tokens` sampled characters."""
    device = next(model.parameters()).device
    idx = vocab.encode(prompt or vocab.itos[0]).to(device)[None, :]  # (1, T)
    g = torch.Generator(device=device)
    g.manual_seed(seed) if seed is not None else g.seed()
    was_training = model.training
    model.eval()
    out = generate(model, idx, tokens, temperature, top_k, generator=g, use_cache=use_cache)
    model.train(was_training)
    return vocab.decode(out[0].tolist())
