"""The trainable head on top of the frozen encoder's vectors.

:class:`SkipConnectionHead` reproduces one layer of quaterion-models' head of the same name (same parameter
names, ``gates_0`` and ``fc_0``, so state dicts move between the two engines)::

    x <- x + sigmoid(gates_0) * fc_0(x)

The layer is affine, so in eval mode the head is one affine map ``x -> x @ W.T + b``;
:meth:`SkipConnectionHead.as_affine` computes it, which lets the saved model use sentence-transformers'
built-in ``Dense`` module instead of custom code (see :mod:`kern_finetune.output.save`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SkipConnectionHead"]


class SkipConnectionHead(nn.Module):
    """Gated residual head of one layer; starts near the identity (gates at -4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.gates_0 = nn.Parameter(torch.full((dim,), -4.0))
        self.fc_0 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.gates_0) * self.fc_0(x)

    @torch.no_grad()
    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``(W, b)`` with ``head(x) == x @ W.T + b``."""
        g = torch.sigmoid(self.gates_0.double())
        weight = torch.eye(self.dim, dtype=torch.float64) + g[:, None] * self.fc_0.weight.double()
        bias = g * self.fc_0.bias.double()
        return weight.float(), bias.float()
