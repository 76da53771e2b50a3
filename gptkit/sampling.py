"""Autoregressive sampling from a trained GPT."""

import math
import operator
from collections.abc import Callable

import torch

from .errors import Interrupted

MAX_TOKENS = 10**7  # per sample: the output is allocated up front, and that is hours of generation on a CPU
SEEDS = range(-(2**63), 2**64)  # what torch.manual_seed and a generator's take
STREAM_EVERY = 64  # tokens per on_tokens call: reading them back syncs a GPU, too rarely to cost anything


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, on_tokens: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Extend `idx` (B, T) by `max_new_tokens`, sampling each from the softmax of the last logits.

    The context is a window of at most block_size tokens; once it is full it restarts from its
    last half, so positions never run past block_size. With a key/value cache (when `use_cache`
    and `model.supports_kv_cache`: every attention layer takes one, and no check found the cache to
    differ from a full pass) the model is fed only the new token, and the kept half
    again when the window restarts; otherwise it recomputes the window for every token. Both paths
    see the same context, so they give the same tokens.

    `on_tokens`, for streaming, is called with each run of new tokens, a (B, k) view of the output:
    every STREAM_EVERY tokens, at the end, and when a KeyboardInterrupt stops generation (which is
    then raised again), so that nothing generated is lost. The model runs in evaluation mode (no
    dropout), and is left in the mode it was in. Returns int64 ids, an ordinary tensor (not an
    inference-mode one), which may be fed back into training.
    """
    check_model(model)
    if not (generator is None or isinstance(generator, torch.Generator)):
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)) or None, got "
                        f"{type(generator).__name__}")
    max_new_tokens, temperature, top_k = check_sampling(max_new_tokens, temperature, top_k, count="max_new_tokens")
    if not (isinstance(idx, torch.Tensor) and idx.dim() == 2 and not (idx.is_floating_point() or idx.is_complex())
            and idx.dtype != torch.bool):
        got = f"a {idx.dim()}-D {idx.dtype} tensor" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise TypeError(f"idx must be a 2-D integer tensor of token ids, (batch, time), e.g. "
                        f"vocab.encode(text)[None, :]; got {got}")
    if idx.size(1) == 0:
        raise ValueError("idx must hold at least one token to continue")
    V = model.config.vocab_size
    lo, hi = (int(idx.min()), int(idx.max())) if idx.numel() else (0, 0)  # (a batch of none has no ids)
    if lo < 0 or hi >= V:  # else the embedding's bare "index out of range"
        raise ValueError(f"idx holds token id {lo if lo < 0 else hi}, outside the model's vocabulary (ids 0 to "
                         f"{V - 1}); encode text with the vocabulary the model was trained with")
    block_size = model.config.block_size
    keep = max(1, block_size // 2)
    cache = model.new_cache() if use_cache and model.supports_kv_cache else None
    B, n = idx.shape  # n: tokens so far
    first = n
    # int64, as embeddings take: a dataset holds its tokens as uint8 (int32 past 256 characters). Made
    # outside inference mode, so that autograd may save it later; inference mode may still write to it.
    out = torch.empty(B, n + max_new_tokens, dtype=torch.long, device=idx.device)
    out[:, :n] = idx
    start = max(0, n - block_size)  # the window's first token
    fed = start  # tokens before this one are in the cache
    shown = n  # tokens before this one were handed to on_tokens

    def stream():
        nonlocal shown
        if on_tokens is not None and n > shown:
            new, shown = out[:, shown:n], n  # counted first: a Ctrl-C inside on_tokens must not repeat them
            on_tokens(new)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                if n - start > block_size:
                    start = fed = n - keep
                    if cache is not None:
                        cache = model.new_cache()
                logits, _ = model(out[:, fed:n], cache=cache)
                if n == first:  # once, not a sync per token: NaN logits would pick id 0 again and again, silently
                    check_finite(logits[:, -1])
                if cache is not None:
                    fed = n
                out[:, n : n + 1] = next_token(logits[:, -1, :], temperature, top_k, generator)
                n += 1
                if on_tokens is not None and n - shown >= STREAM_EVERY:
                    stream()
    except (KeyboardInterrupt, Interrupted):  # a Ctrl-C, or a SIGTERM under interrupt_on_sigterm
        stream()
        raise
    finally:  # a Ctrl-C in a notebook leaves the model as it was
        model.train(was_training)
    stream()
    return out


def check_finite(logits: torch.Tensor) -> None:
    if not bool(torch.isfinite(logits).all()):
        raise ValueError("the model's logits are not finite (NaN or inf): its weights hold such values, or overflow "
                         "in its dtype; nothing can be sampled from it (a model that diverged in training?)")


def check_model(model) -> None:
    if not (hasattr(model, "parameters") and hasattr(model, "config")):
        raise TypeError(f"model must be a GPT (train_model's or load_model's first value), got {type(model).__name__}")


def check_vocab(model, vocab) -> None:
    if not (hasattr(vocab, "encode") and hasattr(vocab, "stoi")):
        raise TypeError(f"vocab must be the model's Vocab (a dataset's .vocab, or load_model's third value), "
                        f"got {type(vocab).__name__}")
    if len(vocab) != model.config.vocab_size:  # another run's: its ids would name other characters
        raise ValueError(f"vocab holds {len(vocab)} characters, the model was trained with {model.config.vocab_size}: "
                         "give the model's own Vocab (load_model's third value, or the dataset it trained on's .vocab)")


def check_sampling(tokens, temperature, top_k, count: str = "tokens") -> tuple[int, float, int | None]:
    """The settings as Python numbers, or a ValueError for settings that cannot sample (a recipe's sample
    section refuses them too); `count` names `tokens` in it. A number may be of any type that converts
    (a numpy scalar, a 0-d tensor), but not a bool: `top_k=True` is a mistake, not 1."""
    n = _whole(tokens)
    if n is None or not 0 <= n <= MAX_TOKENS:
        raise ValueError(f"{count} must be a whole number from 0 to {MAX_TOKENS:,}, got {tokens!r}")
    t = _real(temperature)
    if t is None or not (math.isfinite(t) and t >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: the likeliest character), got {temperature!r}")
    k = None if top_k is None else _whole(top_k)
    if top_k is not None and (k is None or k < 1):
        raise ValueError(f"top_k must be None (all characters) or a whole number >= 1, got {top_k!r}")
    return n, t, k


def _whole(value) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # refuses 2.0: a count is not rounded
    except TypeError:
        return None


def _real(value) -> float | None:
    if isinstance(value, bool) or not hasattr(type(value), "__float__"):  # float() would parse "0.8" too
        return None
    try:
        return float(value)
    except (TypeError, ValueError):  # an array of several
        return None


def next_token(logits: torch.Tensor, temperature: float, top_k: int | None,
               generator: torch.Generator | None) -> torch.Tensor:
    """(B, 1) ids drawn from softmax(logits / temperature) over each row's `top_k` largest logits (B, V);
    at temperature 0, each row's largest (greedy decoding), as at any below float32's smallest normal
    number, which dividing float32 logits by would make 0/0."""
    if temperature < torch.finfo(torch.float32).tiny:
        return logits.argmax(dim=-1, keepdim=True)
    ids = None
    if top_k is not None and top_k < logits.size(-1):
        logits, ids = torch.topk(logits, top_k)  # (B, k)
    logits = logits.float()
    # Shifted so the largest is 0 before dividing: a tiny temperature then gives -inf, never +inf - +inf.
    probs = torch.softmax((logits - logits.amax(dim=-1, keepdim=True)) / temperature, dim=-1)
    # An exponential race, the draw torch.multinomial makes for one sample (the same tokens for a seed),
    # without the checks that read the probabilities back to the host: no GPU sync per token.
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    race.clamp_min_(torch.finfo(race.dtype).tiny)  # MPS may draw -0.0 (pytorch#192577): probs / -0.0 would win
    choice = (probs / race).argmax(dim=-1, keepdim=True)  # (B, 1)
    return choice if ids is None else ids.gather(-1, choice)


def one_newline(prompt: str) -> str:
    """`prompt` with its line endings as a training text's are read: \\r\\n and a lone \\r become \\n."""
    return prompt.replace("\r\n", "\n").replace("\r", "\n")


def sample(model, vocab, prompt: str | None, tokens: int, temperature: float = 0.8, top_k: int | None = 40,
           seed: int | None = None, use_cache: bool = True, on_text: Callable[[str], None] | None = None) -> str:
    """`prompt` followed by `tokens` sampled characters, drawn at `temperature` (0: greedy) from the `top_k`
    likeliest (None: from all). An empty prompt (or None) starts from a newline, the start of a speech
    (from the vocabulary's first character if it has no newline), which begins the text returned.
    The draws come from a generator seeded with `seed`, or with None from torch's global generator of
    the model's device, as torch's own sampling does (`torch.manual_seed` makes them repeatable too).
    `on_text`, for streaming, is called with the prompt, then with the characters as generate's
    on_tokens hands them over."""
    check_model(model)
    if not isinstance(prompt, str | None):
        raise TypeError(f"prompt must be a string, e.g. 'ROMEO:' ('' or None for a newline), got {type(prompt).__name__}")
    prompt = one_newline(prompt or "")
    tokens, temperature, top_k = check_sampling(tokens, temperature, top_k)
    check_vocab(model, vocab)
    whole_seed = None if seed is None else _whole(seed)  # a Python int: a generator takes no numpy or torch one
    if seed is not None and not (whole_seed is not None and SEEDS.start <= whole_seed < SEEDS.stop):
        raise ValueError(f"seed must be None (torch's global generator) or a whole number from -2**63 to 2**64 - 1, "
                         f"got {seed!r}")
    device = next(model.parameters()).device
    if not prompt:  # the start of a speech in the classic format, where there is one
        prompt = "\n" if "\n" in vocab.stoi else vocab.itos[0]
    idx = vocab.encode(prompt).to(device)[None, :]  # (1, T)
    g = None if seed is None else torch.Generator(device=device).manual_seed(whole_seed)
    stream = None if on_text is None else lambda ids: on_text(vocab.decode(ids[0].tolist()))
    if on_text is not None:
        on_text(prompt)
    out = generate(model, idx, tokens, temperature, top_k, generator=g, use_cache=use_cache, on_tokens=stream)
    return vocab.decode(out[0].tolist())
