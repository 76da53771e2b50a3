"""Causal self-attention. Subclasses differ only in how they compute softmax(QK^T/sqrt(hs) + bias)V.

Axis letters: B batch, T time, C channels, nh heads, hs head size.
"""

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..registry import new_registry
from .base import Component, GPTConfig, Params
from .positional import Positional


class AttentionParams(Params):
    bias: bool = Field(False, description="learn biases in the q/k/v and output projections")


def causal_mask(t_q: int, t_k: int, device) -> torch.Tensor:
    """(t_q, t_k) bool, True where query i may see key j: the queries are the last t_q positions."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


class Attention(Component, nn.Module):
    """Multi-head causal self-attention, built with `(config, params, pos)`.

    `pos` is the model's positional module: attention applies its `rotate` to q/k and adds its
    `score_bias` to the scores. The output projection is called `c_proj` so the model can give it
    GPT-2's scaled initialisation.
    """

    Params = AttentionParams

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
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=params.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=params.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        q, k = self.pos.rotate(q, k)
        y = self.attend(q, k, v, self.pos.score_bias(T, T))  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, bias: torch.Tensor | None) -> torch.Tensor:
        """Causal attention of q over k/v, with an optional additive score bias (nh, t_q, t_k)."""
        raise NotImplementedError


attention = new_registry("attention", Attention, "causal self-attention")


@attention.register("flash")
class FlashAttention(Attention):
    """torch's fused scaled_dot_product_attention (FlashAttention kernels where available; Dao et al.
    2022, arXiv:2205.14135)."""

    def attend(self, q, k, v, bias):
        dropout_p = self.dropout if self.training else 0.0
        t_q, t_k = q.size(-2), k.size(-2)
        if bias is None and t_q == t_k:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        allowed = causal_mask(t_q, t_k, q.device)
        mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf")).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


@attention.register("naive")
class NaiveAttention(Attention):
    """Explicit QK^T, causal mask, softmax and dropout: the reference the fused kernel must match."""

    def __init__(self, config: GPTConfig, params: AttentionParams, pos: Positional):
        super().__init__(config, params, pos)
        self.attn_dropout = nn.Dropout(config.dropout)

    def attend(self, q, k, v, bias):
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, t_q, t_k)
        if bias is not None:
            att = att + bias
        att = att.masked_fill(~causal_mask(q.size(-2), k.size(-2), q.device), float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v  # (B, nh, t_q, hs)
