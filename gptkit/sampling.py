"""Autoregressive sampling from a trained GPT."""

import torch


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Extend `idx` (B, T) by `max_new_tokens`, sampling each from the softmax of the last logits."""
    block_size = model.config.block_size
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -block_size:])
        logits = logits[:, -1, :].float() / temperature  # (B, V)
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        idx = torch.cat((idx, torch.multinomial(probs, 1, generator=generator)), dim=1)
    return idx


def sample(model, vocab, prompt: str, tokens: int, temperature: float = 0.8, top_k: int | None = 40,
           seed: int | None = None) -> str:
    """`prompt` followed by `tokens` sampled characters."""
    device = next(model.parameters()).device
    idx = vocab.encode(prompt or vocab.itos[0]).to(device)[None, :]  # (1, T)
    g = torch.Generator(device=device)
    g.manual_seed(seed) if seed is not None else g.seed()
    was_training = model.training
    model.eval()
    out = generate(model, idx, tokens, temperature, top_k, generator=g)
    model.train(was_training)
    return vocab.decode(out[0].tolist())
