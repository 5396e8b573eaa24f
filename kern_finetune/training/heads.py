"""The trainable head on top of the frozen encoder's vectors."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SkipConnectionHead"]


class SkipConnectionHead(nn.Module):
    """One layer of quaterion-models' head of the same name, ``x + sigmoid(gates_0) * fc_0(x)``, with the same
    parameter names (state dicts move between the two engines); starts near the identity (gates at -4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.gates_0 = nn.Parameter(torch.full((dim,), -4.0))
        self.fc_0 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.sigmoid(self.gates_0) * self.fc_0(x)

    @torch.no_grad()
    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``(W, b)`` with ``head(x) == x @ W.T + b``: the saved model's built-in ``Dense``."""
        g = torch.sigmoid(self.gates_0.double())
        weight = torch.eye(self.dim, dtype=torch.float64) + g[:, None] * self.fc_0.weight.double()
        bias = g * self.fc_0.bias.double()
        return weight.float(), bias.float()
