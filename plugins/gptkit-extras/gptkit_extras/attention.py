"""Grouped-query attention: n_head query heads share n_kv_head key/value heads.

Axis letters: B batch, T time, C channels, nh query heads, nkv key/value heads, hs head size.
"""

from gptkit.components.attention import AttentionParams, FlashAttention
from pydantic import Field


class GQAParams(AttentionParams):
    n_kv_head: int = Field(1, gt=0, description="key/value heads; 1 is multi-query attention, n_head is ordinary multi-head")


class GroupedQueryAttention(FlashAttention):
    """Grouped-query attention (Ainslie et al. 2023, arXiv:2305.13245): each key/value head serves
    n_head / n_kv_head query heads, shrinking the k/v projections and the KV cache; n_kv_head=1 is
    multi-query attention (Shazeer 2019, arXiv:1911.02150).

    Works with every positional scheme: rotations apply to the n_kv_head keys before they are shared,
    and score biases are per query head. With n_kv_head == n_head its weights and outputs are those
    of the built-in attentions.
    """

    Params = GQAParams

    @classmethod
    def check(cls, config, params):
        super().check(config, params)
        if config.n_head % params.n_kv_head:
            raise ValueError(f"n_head {config.n_head} is not divisible by n_kv_head {params.n_kv_head}")

    def __init__(self, config, params: GQAParams, pos):
        super().__init__(config, params, pos)
        self.n_kv_head = params.n_kv_head

    def qkv_width(self, config, params: GQAParams) -> int:
        # queries for n_head heads, then keys and values for n_kv_head heads, in one matmul
        return config.n_embd + 2 * params.n_kv_head * config.head_dim

    def project(self, x):
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split([C, self.n_kv_head * hs, self.n_kv_head * hs], dim=2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, hs).transpose(1, 2)  # (B, nkv, T, hs)
        return q, k, v  # the cache holds only the nkv shared heads: GQA's memory saving

    def attend(self, q, k, v, bias):
        group = self.n_head // self.n_kv_head
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, t_k, hs)
        return super().attend(q, k, v, bias)
