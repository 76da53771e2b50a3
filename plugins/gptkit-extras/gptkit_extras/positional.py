"""T5's relative position bias, causal: a learned score bias per head and per bucket of distance."""

import math

import torch
from gptkit.components import GPTConfig, Params, Positional, past_distance
from pydantic import Field
from torch import nn


class T5BiasParams(Params):
    buckets: int = Field(32, ge=2, description="distance buckets: the first half exact, the rest log-spaced")
    max_distance: int = Field(128, gt=0, description="scale of the log-spaced buckets; farther distances share the last one")


class T5RelativeBias(Positional):
    """Relative position bias (Raffel et al. 2020, arXiv:1910.10683, section 2.1): each head learns a
    scalar added to the attention score for each bucket of query-key distance. Causal, so only
    distances into the past are bucketed; small ones exactly, larger ones logarithmically."""

    Params = T5BiasParams

    @classmethod
    def check(cls, config, params):
        if params.max_distance <= params.buckets // 2:
            raise ValueError(f"max_distance {params.max_distance} must exceed buckets/2 = {params.buckets // 2}")

    def __init__(self, config: GPTConfig, params: T5BiasParams):
        super().__init__(config, params)
        self.relative_bias = nn.Embedding(params.buckets, config.n_head)  # (buckets, nh)

    def score_bias(self, t_q, t_k):
        distance = past_distance(t_q, t_k, self.relative_bias.weight.device)  # (t_q, t_k)
        return self.relative_bias(self.bucket(distance)).permute(2, 0, 1)  # (nh, t_q, t_k)

    def bucket(self, distance: torch.Tensor) -> torch.Tensor:
        n, exact = self.params.buckets, self.params.buckets // 2
        log_ratio = torch.log(distance.clamp(min=exact).float() / exact) / math.log(self.params.max_distance / exact)
        far = (exact + log_ratio * (n - exact)).long().clamp(max=n - 1)
        return torch.where(distance < exact, distance, far)
