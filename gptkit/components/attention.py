"""Causal self-attention. Subclasses differ only in how they compute softmax(QK^T/sqrt(hs) + bias)V.

Axis letters: B batch, T time, C channels, nh heads, hs head size.
"""

import inspect
import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..registry import abstract_methods, new_registry
from .base import Component, GPTConfig, Params, dropout_layer
from .positional import Positional, checked_bias


class AttentionParams(Params):
    bias: bool = Field(False, description="learn biases in the q/k/v and output projections")


def causal_mask(t_q: int, t_k: int, device) -> torch.Tensor:
    """(t_q, t_k) bool, True where query i may see key j: the queries are the last t_q positions."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class KVCache:
    """The keys and values one attention layer has computed so far. With it, generation feeds the
    model only the new tokens instead of recomputing the whole context for every token."""

    def __init__(self):
        self.k = self.v = None  # (B, nh, T_past, hs)

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(-2)

    def extend(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new positions' k, v (B, nh, T, hs); return all of them (B, nh, T_past + T, hs)."""
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=-2), torch.cat((self.v, v), dim=-2)
        self.k, self.v = k, v
        return k, v


class Attention(Component, nn.Module):
    """Multi-head causal self-attention, built with `(config, params, pos)`.

    `pos` is the model's positional module: attention applies its `rotate` to q/k and adds its
    `score_bias` to the scores. The output projection is called `c_proj` so the model can give it
    GPT-2's scaled initialisation.

    A subclass whose `attend` handles fewer queries than keys (the queries being the last t_q
    positions, as `causal_mask` assumes) sets `supports_kv_cache`; `forward` then does the caching.
    A model with any attention that does not (see `caches`) is sampled by recomputing the context.

    An attention that deliberately computes another function than softmax(QK^T/sqrt(hs) + bias)V over
    every earlier position (a sliding window, say) sets `matches_naive = False`: the conformance check
    that compares it with the reference `naive` attention then says it does not apply.
    """

    Params = AttentionParams
    supports_kv_cache: ClassVar[bool] = False
    matches_naive: ClassVar[bool] = True

    @classmethod
    def unimplemented(cls) -> list[str]:
        """What a subclass has yet to write (the registry refuses it until nothing is): `attend`, or a
        whole `forward`, which no @abstractmethod can say."""
        written = [m for m in ("attend", "forward") if getattr(cls, m) is not getattr(Attention, m)]
        return abstract_methods(cls) + ([] if written else ["attend() (or a whole forward(x, cache=None))"])

    @classmethod
    def check(cls, config, params):
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}")

    def __init__(self, config: GPTConfig, params: AttentionParams, pos: Positional):
        super().__init__()
        self.params = params
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.pos = pos
        bias = getattr(params, "bias", False)  # a subclass's Params need not derive from AttentionParams
        self.c_attn = nn.Linear(config.n_embd, self.qkv_width(config, params), bias=bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.resid_dropout = dropout_layer(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, T, C) continues the positions held in `cache`, if given, and is added to it."""
        B, T, C = x.size()
        start = len(cache) if cache is not None else 0
        q, k, v = self.project(x)  # (B, nh, T, hs) each
        q, k = self.pos.rotate(q, k, start)
        if cache is not None:
            k, v = cache.extend(k, v)  # (B, nh, start + T, hs)
        bias = checked_bias(self.pos, self.pos.score_bias(T, k.size(-2)), self.n_head, T, k.size(-2))
        y = self.attend(q, k, v, bias)  # (B, nh, T, hs)
        if y.shape != q.shape:  # else the view below would scramble it without a word
            raise RuntimeError(f"{type(self).__name__}.attend returned shape {tuple(y.shape)}; it must return "
                               f"(B, n_head, T, head_dim) = {tuple(q.shape)}, like q")
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def qkv_width(self, config: GPTConfig, params) -> int:
        """Output features of c_attn, the q/k/v projection that `project` splits: overridden with it."""
        return 3 * config.n_embd

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The queries, keys and values of x (B, T, C), (B, heads, T, hs) each: what a subclass with other
        projections (fewer key/value heads, say) overrides."""
        B, T, C = x.size()
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)  # q, k, v side by side
        # Unbinding the q/k/v axis where it is keeps their gradients' stack a single copy into c_attn's
        # output layout (a permute first costs another copy in backward: attention 1.1x slower on CPU).
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (B, nh, T, hs) each
        return q, k, v

    def attend(self, q, k, v, bias: torch.Tensor | None) -> torch.Tensor:
        """Causal attention of q over k/v, with an optional additive score bias (nh, t_q, t_k)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attend(q, k, v, bias) nor a whole "
                                  "forward(x, cache=None)")


def caches(attn: nn.Module) -> bool:
    """Whether generation may hand `attn` a KVCache: it says it supports one, and its forward takes
    one (a subclass that overrides forward(x) alone inherits the flag, not the parameter)."""
    return getattr(attn, "supports_kv_cache", False) and "cache" in inspect.signature(attn.forward).parameters


def why_not_cached(attn) -> str | None:
    """Why generation may not hand `attn` (a module or class) a KVCache, said for its author; None if it may."""
    if caches(attn):
        return None
    if getattr(attn, "supports_kv_cache", False):
        return ("its supports_kv_cache is True, but its forward takes no cache: write forward(x, cache=None), or "
                "only attend() and let the base forward cache")
    if "cache" not in inspect.signature(attn.forward).parameters:  # the flag alone would not do
        return ("it neither sets supports_kv_cache = True nor takes a cache: write forward(x, cache=None) and set "
                "the flag, or write only attend() and set it if attend handles fewer queries than keys")
    return ("it does not set supports_kv_cache = True: set it if its attend handles fewer queries than keys, the "
            "queries being the last positions")


attention = new_registry("attention", Attention, "causal self-attention")


@attention.register("flash")
class FlashAttention(Attention):
    """torch's fused scaled_dot_product_attention (FlashAttention kernels where available; Dao et al.
    2022, arXiv:2205.14135)."""

    supports_kv_cache = True

    def attend(self, q, k, v, bias):
        dropout_p = self.dropout if self.training else 0.0
        t_q, t_k = q.size(-2), k.size(-2)
        if bias is None and t_q in (1, t_k):  # one query (a cached generation step) sees every key
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=t_q > 1)
        allowed = causal_mask(t_q, t_k, q.device)
        mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


@attention.register("naive")
class NaiveAttention(Attention):
    """Explicit QK^T, causal mask, softmax and dropout: the reference the fused kernel must match."""

    supports_kv_cache = True

    def __init__(self, config: GPTConfig, params: AttentionParams, pos: Positional):
        super().__init__(config, params, pos)
        self.attn_dropout = dropout_layer(config.dropout)

    def attend(self, q, k, v, bias):
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, t_q, t_k)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v  # (B, nh, t_q, hs)
