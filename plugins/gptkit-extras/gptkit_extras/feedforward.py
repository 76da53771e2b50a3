"""Feedforward variants: squared ReLU, and a GELU-gated linear unit."""

import torch.nn.functional as F
from gptkit.components.feedforward import MLP, SwiGLU


class SquaredReLU(MLP):
    """Two-layer perceptron with a squared ReLU, hidden 4 * n_embd (Primer, So et al. 2021,
    arXiv:2109.08668)."""

    def forward(self, x):
        return self.dropout(self.c_proj(F.relu(self.c_fc(x)).square()))


class GeGLU(SwiGLU):
    """Gated linear unit with a GELU gate (Shazeer 2020, arXiv:2002.05202); hidden 8/3 * n_embd like
    swiglu, so parameters match a 4x MLP."""

    def forward(self, x):
        gate, value = self.c_fc(x).chunk(2, dim=-1)  # (B, T, hidden) each
        return self.dropout(self.c_proj(F.gelu(gate) * value))
