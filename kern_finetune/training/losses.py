"""Similarity-learning losses over a batch of embeddings with integer class labels.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels) -> scalar``, without parameters of its
own, so the head's optimizer is all there is to train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SupConLoss", "TripletLoss", "make_loss", "SUPCON_TEMPERATURE", "TRIPLET_MARGIN"]

SUPCON_TEMPERATURE = 0.5
"""The supcon loss's temperature in both modes (``docs/decisions.md``, "loss")."""
TRIPLET_MARGIN = 0.5
"""The triplet loss's margin (cosine distance): the 2022 experiment's."""


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = torch.ones_like(values) * mask.to(values)
    return (values * w).sum() / w.sum().clamp_min(1e-8)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., 2020), cosine similarity.

    Args:
        temperature: softmax temperature on cosine similarities; lower is sharper.

    Input: ``embeddings`` (n, d), any scale (normalised inside); ``labels`` (n,) int.
    Pulls every same-class pair in the batch together against all other rows. Needs at least two rows
    per class in a batch: use class-aware batches.

    Reference: https://arxiv.org/abs/2004.11362
    """

    def __init__(self, temperature: float = SUPCON_TEMPERATURE) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        n = z.shape[0]
        logits = z @ z.T / self.temperature
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (labels[:, None] == labels[None, :]) & ~eye
        pw = pos.to(z)
        n_pos = pw.sum(1)
        per_row = -(log_prob.masked_fill(~pos, 0.0) * pw).sum(1) / n_pos.clamp_min(1e-8)
        return _masked_mean(per_row, n_pos > 0)


class TripletLoss(nn.Module):
    """Triplet loss with cosine distance and batch-hard mining (as Quaterion's ``TripletLoss(mining="hard")``):
    per anchor, the hardest positive and the hardest negative of the batch.

    Args:
        margin: the negative must be farther than the positive by at least this cosine distance.

    Input: ``embeddings`` (n, d), ``labels`` (n,) int.
    Needs at least two rows per class in a batch: use class-aware batches.

    Reference: https://arxiv.org/abs/1703.07737
    """

    def __init__(self, margin: float = TRIPLET_MARGIN) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        dist = 1.0 - z @ z.T
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        same = labels[:, None] == labels[None, :]
        pos = same & ~eye
        neg = ~same
        valid = pos.any(1) & neg.any(1)
        d_ap = dist.masked_fill(~pos, float("-inf")).max(1).values
        d_an = dist.masked_fill(~neg, float("inf")).min(1).values
        per_row = F.relu(d_ap - d_an + self.margin).masked_fill(~valid, 0.0)
        return _masked_mean(per_row, valid)


def make_loss(name: str) -> nn.Module:
    """The loss named on the command line: ``supcon`` or ``triplet``."""
    if name == "supcon":
        return SupConLoss()
    if name == "triplet":
        return TripletLoss()
    raise ValueError(f"unknown loss {name!r}")
