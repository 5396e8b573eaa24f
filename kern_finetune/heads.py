"""Trainable heads on top of the frozen encoder's vectors.

:class:`SkipConnectionHead` reproduces quaterion-models' head of the same name (same parameter names,
``gates_{i}`` and ``fc_{i}``, so state dicts move between the two engines)::

    for each layer i:  x <- x + sigmoid(gates_i) * fc_i(skip_dropout(x))

followed by a fixed blend with the input, ``out <- raw_weight * x_in + (1 - raw_weight) * out``
(``raw_weight`` is a non-persistent buffer, 0 by default: the state dict keeps quaterion-models' keys; the
trainer sets it, chosen on validation records, see :func:`kern_finetune.train.fit_head`). The blend keeps
the base model's local neighbourhoods in the pushed vectors: the first screen a labeler sees.

Each layer is affine, so in eval mode the whole stack is one affine map ``x -> x @ W.T + b``;
:meth:`SkipConnectionHead.as_affine` computes it, which lets the saved model use sentence-transformers'
built-in ``Dense`` module instead of custom code (see :mod:`kern_finetune.save`).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SkipConnectionHead"]


class SkipConnectionHead(nn.Module):
    """Gated residual head, stackable (``n_layers``); starts near the identity (gates at -4).

    ``raw_weight`` in [0, 1]: share of the input in the output (a fixed blend, not trained by gradient).
    """

    def __init__(
        self, dim: int, *, n_layers: int = 1, dropout: float = 0.0, skip_dropout: float = 0.0, raw_weight: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= raw_weight <= 1.0:
            raise ValueError(f"raw_weight must be in [0, 1], got {raw_weight}")
        self.dim = dim
        self.n_layers = n_layers
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.skip_dropout = nn.Dropout(skip_dropout) if skip_dropout > 0 else nn.Identity()
        for i in range(n_layers):
            self.register_parameter(f"gates_{i}", nn.Parameter(torch.full((dim,), -4.0)))
            setattr(self, f"fc_{i}", nn.Linear(dim, dim))
        self.register_buffer("raw_weight", torch.tensor(float(raw_weight)), persistent=False)

    def set_raw_weight(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"raw_weight must be in [0, 1], got {value}")
        self.raw_weight.fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = x
        x = self.dropout(x)
        for i in range(self.n_layers):
            fc: nn.Linear = getattr(self, f"fc_{i}")
            gates: torch.Tensor = getattr(self, f"gates_{i}")
            x = x + torch.sigmoid(gates) * fc(self.skip_dropout(x))
        a = self.raw_weight
        return x if float(a) == 0.0 else a * x_in + (1.0 - a) * x

    @torch.no_grad()
    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The eval-mode map as ``(W, b)`` with ``head(x) == x @ W.T + b``."""
        weight = torch.eye(self.dim, dtype=torch.float64)
        bias = torch.zeros(self.dim, dtype=torch.float64)
        for i in range(self.n_layers):
            fc: nn.Linear = getattr(self, f"fc_{i}")
            g = torch.sigmoid(getattr(self, f"gates_{i}").double())
            layer_w = torch.eye(self.dim, dtype=torch.float64) + g[:, None] * fc.weight.double()
            layer_b = g * fc.bias.double()
            weight, bias = layer_w @ weight, layer_w @ bias + layer_b
        a = float(self.raw_weight)
        weight = a * torch.eye(self.dim, dtype=torch.float64) + (1.0 - a) * weight
        bias = (1.0 - a) * bias
        return weight.float(), bias.float()
