"""Positional encodings.

One module is built per model and handed both to the model input and to every attention layer.
Each scheme overrides only the hook where it acts; the others stay no-ops:

- `embed(x, start)`: added to token embeddings at the input           x: (B, T, C)
- `rotate(q, k, start)`: applied to queries and keys inside attention  q: (B, nh, T, hs), k: (B, nkv, T, hs)
- `score_bias(t_q, t_k)`: added to attention scores before softmax    (nh, t_q, t_k)

`start` is the position of the first token, so cached generation can continue a sequence. Keys may
have fewer heads than queries (nkv < nh: grouped-query attention); rotate returns each in its own shape.
Axis letters: B batch, T time, C channels, nh heads, nkv key/value heads, hs head size.
"""

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from ..registry import new_registry
from .base import Component, GPTConfig, Params


def past_distance(t_q: int, t_k: int, device) -> torch.Tensor:
    """(t_q, t_k) long: how many positions key j lies before query i, the queries being the last t_q
    positions; 0 where the key is in the future (the causal mask hides it anyway)."""
    q_pos = torch.arange(t_k - t_q, t_k, device=device)
    return (q_pos[:, None] - torch.arange(t_k, device=device)[None, :]).clamp(min=0)


class BiasShapeError(RuntimeError):
    """A score_bias attention cannot add to its (B, nh, t_q, t_k) scores: raised where attention gets it,
    blamed on `pos`, the positional module that made it."""

    def __init__(self, pos: nn.Module, message: str):
        super().__init__(message)
        self.pos = pos


def checked_bias(pos: nn.Module, bias, n_head: int, t_q: int, t_k: int) -> torch.Tensor | None:
    """`bias`, what `pos.score_bias(t_q, t_k)` returned, if attention with `n_head` query heads can add it
    to its (B, n_head, t_q, t_k) scores: None, or a tensor that broadcasts to (1, n_head, t_q, t_k) (so
    (n_head, t_q, t_k) too). Else a BiasShapeError: a wrong shape would otherwise fail inside attention's
    arithmetic, or broadcast into the wrong heads. Attention's base forward checks it; an attention that
    writes its own forward calls this on what score_bias gives it, for the positional to be named."""
    want = (n_head, t_q, t_k)
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor) and bias.dim() <= 4:
        try:
            if torch.broadcast_shapes(bias.shape, (1, *want)) == (1, *want):
                return bias
        except RuntimeError:
            pass
    got = f"shape {tuple(bias.shape)}" if isinstance(bias, torch.Tensor) else f"a {type(bias).__name__}"
    raise BiasShapeError(pos, f"score_bias({t_q}, {t_k}) returned {got}; it must return None or (n_head, t_q, t_k) = "
                              f"{want}")


class Positional(Component, nn.Module):
    """Base class: built with `(config, params)`; every hook defaults to doing nothing. A scheme meant to
    add no positional information sets `encodes_position = False`: the conformance check that it tells
    positions apart then says it does not apply."""

    encodes_position: ClassVar[bool] = True

    def __init__(self, config: GPTConfig, params: Params):
        super().__init__()
        self.params = params

    def embed(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int = 0):
        return q, k

    def score_bias(self, t_q: int, t_k: int) -> torch.Tensor | None:
        return None


positional = new_registry("positional", Positional, "how token positions enter the model")


@positional.register("none")
class NoPositional(Positional):
    """No positional information; causal attention alone orders tokens (Haviv et al. 2022, arXiv:2203.16634)."""

    encodes_position = False


class WavelengthParams(Params):
    base: float = Field(10000.0, gt=1, description="wavelength base of the sinusoids")


class SinusoidalParams(WavelengthParams):
    # Unit-amplitude sinusoids would drown token embeddings initialised at std 0.02 (GPT-2) about
    # 35 to 1, and training stalls at the unigram loss; the paper instead scales embeddings up.
    amplitude: float = Field(0.02, gt=0, description="peak value of each sine/cosine; 0.02 matches the token embeddings' init")


@positional.register("sinusoidal")
class Sinusoidal(Positional):
    """Fixed sine/cosine embeddings added to the input (Vaswani et al. 2017, arXiv:1706.03762)."""

    Params = SinusoidalParams

    @classmethod
    def check(cls, config, params):
        if config.n_embd % 2:
            raise ValueError(f"sinusoidal needs an even n_embd, got {config.n_embd}")

    def __init__(self, config: GPTConfig, params: SinusoidalParams):
        super().__init__(config, params)
        pos = torch.arange(config.block_size).unsqueeze(1)  # (T, 1)
        freq = torch.exp(torch.arange(0, config.n_embd, 2) * (-math.log(params.base) / config.n_embd))
        pe = torch.zeros(config.block_size, config.n_embd)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq)
        self.register_buffer("pe", params.amplitude * pe, persistent=False)  # (T, C), derived: not saved

    def embed(self, x, start=0):
        return x + self.pe[start : start + x.size(1)].to(x.dtype)


@positional.register("learned")
class Learned(Positional):
    """A learned embedding per position, added to the input (GPT-2)."""

    def __init__(self, config: GPTConfig, params: Params):
        super().__init__(config, params)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def embed(self, x, start=0):
        pos = torch.arange(start, start + x.size(1), device=x.device)
        return x + self.wpe(pos)  # (B, T, C) + (T, C)


@positional.register("rope")
class RoPE(Positional):
    """Rotary embeddings: rotate query/key channel pairs by position (Su et al. 2021, arXiv:2104.09864)."""

    Params = WavelengthParams

    @classmethod
    def check(cls, config, params):
        if config.head_dim % 2:
            raise ValueError(
                f"rope needs an even head size, but n_embd/n_head = {config.n_embd}/{config.n_head} "
                f"= {config.head_dim}; pick n_head so that n_embd/n_head is even"
            )

    def __init__(self, config: GPTConfig, params: WavelengthParams):
        super().__init__(config, params)
        hs = config.head_dim
        inv_freq = params.base ** (-torch.arange(0, hs, 2, dtype=torch.float32) / hs)  # (hs/2,)
        angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)  # (T, hs/2)
        # Channel i pairs with channel i + hs/2 (the GPT-NeoX layout), so the rotation of each pair,
        # (x1 cos - x2 sin, x2 cos + x1 sin), is x * cos + roll(x, hs/2) * sin with these tables.
        self.register_buffer("cos", torch.cat((angles.cos(), angles.cos()), dim=-1), persistent=False)  # (T, hs)
        self.register_buffer("sin", torch.cat((-angles.sin(), angles.sin()), dim=-1), persistent=False)  # (T, hs)

    def rotate(self, q, k, start=0):
        t = q.size(-2)
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]  # (T, hs)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    @staticmethod
    def _rotate(x, cos, sin):
        xf = x.float()  # (B, nh, T, hs)
        return (xf * cos + xf.roll(xf.size(-1) // 2, dims=-1) * sin).type_as(x)


@positional.register("alibi")
class ALiBi(Positional):
    """Linear biases: each head penalises scores by distance with its own slope (Press et al. 2021,
    arXiv:2108.12409)."""

    def __init__(self, config: GPTConfig, params: Params):
        super().__init__(config, params)
        self.register_buffer("slopes", self.head_slopes(config.n_head), persistent=False)  # (nh,)

    @staticmethod
    def head_slopes(n_head: int) -> torch.Tensor:
        # The paper's geometric sequence; for a head count that is not a power of two, take the
        # closest power's slopes and fill in with every other slope of the next power.
        def geometric(n):
            return [2 ** (-8 * (i + 1) / n) for i in range(n)]

        p = 2 ** math.floor(math.log2(n_head))
        slopes = geometric(p) + geometric(2 * p)[0::2][: n_head - p]
        return torch.tensor(slopes)

    def score_bias(self, t_q, t_k):
        return self.slopes[:, None, None] * -past_distance(t_q, t_k, self.slopes.device)  # (nh, t_q, t_k)
