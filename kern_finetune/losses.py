"""Similarity-learning losses over a batch of embeddings with integer class labels.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels, weights=None) -> scalar``, where
``weights`` (optional, one per row, in [0, 1]) down-weights rows whose label is doubtful. Losses with
parameters of their own (:class:`CosFaceLoss`) must be given to the optimizer with the head's.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SupConLoss", "TripletLoss", "CosFaceLoss", "CrossBatchMemory", "NeighbourhoodDistillation", "UniformityLoss",
           "SearchFloorLoss", "make_loss"]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    w = torch.ones_like(values) if weights is None else weights.to(values)
    if mask is not None:
        w = w * mask.to(values)
    return (values * w).sum() / w.sum().clamp_min(1e-8)


class SupConLoss(nn.Module):
    """Supervised contrastive loss (Khosla et al., 2020), cosine similarity.

    Args:
        temperature: softmax temperature on cosine similarities; lower is sharper.

    Input: ``embeddings`` (n, d), any scale (normalised inside); ``labels`` (n,) int; ``weights`` (n,).
    Pulls every same-class pair in the batch together against all other rows. Needs at least two rows
    per class in a batch: use class-aware batches.

    Reference: https://arxiv.org/abs/2004.11362
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    ) -> torch.Tensor:
        """Loss of the batch; ``memory`` = ``(embeddings, labels, weights)`` of earlier batches (detached).

        With a memory, each batch row is contrasted against the batch *and* the memory rows (a
        cross-batch memory, Wang et al. 2020, https://arxiv.org/abs/1912.06798): more positives and
        negatives per anchor than a small batch holds. Only the batch rows are anchors.
        """
        z = F.normalize(embeddings, dim=1)
        n = z.shape[0]
        keys, key_labels, key_weights = z, labels, weights
        if memory is not None and memory[0].shape[0] > 0:
            m_z, m_labels, m_weights = memory
            keys = torch.cat([z, F.normalize(m_z, dim=1).to(z)])
            key_labels = torch.cat([labels, m_labels.to(labels)])
            if weights is not None or m_weights is not None:
                w_b = torch.ones(n, device=z.device) if weights is None else weights.to(z)
                w_m = torch.ones(m_z.shape[0], device=z.device) if m_weights is None else m_weights.to(z)
                key_weights = torch.cat([w_b, w_m])
        logits = z @ keys.T / self.temperature
        eye = torch.zeros(n, keys.shape[0], dtype=torch.bool, device=z.device)
        eye[:, :n] = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (labels[:, None] == key_labels[None, :]) & ~eye
        pw = pos.to(z) if key_weights is None else pos.to(z) * key_weights[None, :].to(z)
        n_pos = pw.sum(1)
        per_row = -(log_prob.masked_fill(~pos, 0.0) * pw).sum(1) / n_pos.clamp_min(1e-8)
        return _weighted_mean(per_row, weights, n_pos > 0)


class CrossBatchMemory(nn.Module):
    """A loss that also contrasts each batch with the detached rows of earlier batches (cross-batch memory,
    Wang et al. 2020, https://arxiv.org/abs/1912.06798).

    Args:
        loss: a loss that takes ``memory=(embeddings, labels, weights)`` (:class:`SupConLoss`).
        size: rows kept; the oldest batches are dropped once more than ``size`` rows are held.

    Called like the wrapped loss, ``memory(embeddings, labels, weights=None)``: the loss of the batch
    against the batch and the memory, then the batch (detached) joins the memory. Use it for training
    only; validate with the wrapped loss itself. Full mode wraps supcon with ``encoder_memory`` rows.
    """

    def __init__(self, loss: nn.Module, size: int) -> None:
        super().__init__()
        self.loss = loss
        self.size = size
        self._batches: deque[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = deque()  # oldest first
        self._rows = 0

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        held = self._batches
        memory = None
        if held:
            memory = (torch.cat([m[0] for m in held]), torch.cat([m[1] for m in held]),
                      None if weights is None else torch.cat([m[2] for m in held]))  # type: ignore[misc]
        out = self.loss(embeddings, labels, weights, memory=memory)
        held.append((embeddings.detach(), labels, weights))
        self._rows += len(embeddings)
        while self._rows > self.size:
            self._rows -= held.popleft()[0].shape[0]
        return out


class TripletLoss(nn.Module):
    """Triplet loss with cosine distance and in-batch mining (as Quaterion's ``TripletLoss``).

    Args:
        margin: the negative must be farther than the positive by at least this cosine distance.
        mining: ``"hard"`` (hardest positive and hardest negative per anchor) or ``"semihard"``
            (per anchor-positive pair, the closest negative that is still farther than the positive;
            the hardest negative when none is).

    Input: ``embeddings`` (n, d), ``labels`` (n,) int, ``weights`` (n,) per anchor.
    Needs at least two rows per class in a batch: use class-aware batches.

    Reference: https://arxiv.org/abs/1703.07737 (batch-hard), https://arxiv.org/abs/1503.03832 (semi-hard)
    """

    def __init__(self, margin: float = 0.5, mining: str = "hard") -> None:
        super().__init__()
        if mining not in ("hard", "semihard"):
            raise ValueError(f"mining must be 'hard' or 'semihard', got {mining!r}")
        self.margin = margin
        self.mining = mining

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        dist = 1.0 - z @ z.T
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        same = labels[:, None] == labels[None, :]
        pos = same & ~eye
        neg = ~same
        valid = pos.any(1) & neg.any(1)
        if self.mining == "hard":
            d_ap = dist.masked_fill(~pos, float("-inf")).max(1).values
            d_an = dist.masked_fill(~neg, float("inf")).min(1).values
            per_row = F.relu(d_ap - d_an + self.margin).masked_fill(~valid, 0.0)
            return _weighted_mean(per_row, weights, valid)
        # semi-hard: for every (anchor, positive) pair
        d_ap = dist[:, :, None]  # (a, p, 1)
        d_an = dist[:, None, :]  # (a, 1, n)
        negm = neg[:, None, :]
        semi = negm & (d_an > d_ap) & (d_an < d_ap + self.margin)
        inf = torch.tensor(float("inf"), device=z.device)
        semi_min = torch.where(semi, d_an, inf).min(2).values
        hard_min = torch.where(negm, d_an, inf).min(2).values
        chosen = torch.where(torch.isfinite(semi_min), semi_min, hard_min)
        pair_loss = F.relu(dist - chosen + self.margin)
        pair_mask = pos & valid[:, None]
        per_row = (pair_loss * pair_mask).sum(1) / pair_mask.sum(1).clamp_min(1)
        return _weighted_mean(per_row, weights, valid)


class CosFaceLoss(nn.Module):
    """CosFace (large-margin cosine) proxy loss: one learned proxy per class.

    Args:
        n_classes: number of classes (proxies).
        dim: embedding size.
        scale: logit scale ``s``.
        margin: cosine margin ``m`` subtracted from the true class's logit.

    Input: ``embeddings`` (n, d), ``labels`` (n,) int, ``weights`` (n,). Works with any batch
    composition. Its proxies are parameters: give ``loss.parameters()`` to the optimizer.

    Reference: https://arxiv.org/abs/1801.09414
    """

    def __init__(self, n_classes: int, dim: int, *, scale: float = 30.0, margin: float = 0.2) -> None:
        super().__init__()
        self.scale = scale
        self.margin = margin
        self.proxies = nn.Parameter(torch.randn(n_classes, dim) * 0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T
        logits = self.scale * (cos - self.margin * F.one_hot(labels, cos.shape[1]).to(cos))
        per_row = F.cross_entropy(logits, labels, reduction="none")
        return _weighted_mean(per_row, weights)


class NeighbourhoodDistillation(nn.Module):
    """Keep the base model's local neighbourhoods: KL(P_raw || P_tuned) over each row's neighbours.

    Args:
        temperature: softmax temperature on cosine similarities, for both spaces; low values weight the
            nearest neighbours (what a labeler's first screen shows) far above the rest.

    Input: ``embeddings`` (n, d) the tuned vectors, ``raw`` (n, d) the base model's vectors of the same rows
    (any rows: labeled or not; no labels needed). For every row, ``P_raw`` is the softmax over the other
    rows of its raw cosine similarities and ``P_tuned`` the same in the tuned space; the loss is the mean
    KL divergence. It is zero when the tuned space ranks and spaces each row's neighbours as the raw one
    does (stochastic neighbour embedding's objective, Hinton & Roweis 2002, used here as a distillation
    term next to a class loss).
    """

    def __init__(self, temperature: float = 0.05) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        r = F.normalize(raw, dim=1).to(z)
        n = z.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        t_logits = (z @ z.T / self.temperature).masked_fill(eye, float("-inf"))
        r_logits = (r @ r.T / self.temperature).masked_fill(eye, float("-inf"))
        p_raw = torch.softmax(r_logits, dim=1)
        log_p_raw = torch.log_softmax(r_logits, dim=1).masked_fill(eye, 0.0)
        log_p_t = torch.log_softmax(t_logits, dim=1).masked_fill(eye, 0.0)
        return (p_raw * (log_p_raw - log_p_t)).sum(1).mean()


class UniformityLoss(nn.Module):
    """Uniformity on the hypersphere (Wang & Isola 2020): ``log E exp(-t * ||z_i - z_j||^2)`` over pairs.

    Lower is more spread out. Against collapse: keeps the records a class loss does not see (unlabeled,
    between classes) from being squeezed into sparse gaps, which is what shrinks refinery's threshold
    search results. Input: ``embeddings`` (n, d), any rows. Reference: https://arxiv.org/abs/2005.10242
    """

    def __init__(self, t: float = 2.0) -> None:
        super().__init__()
        self.t = t

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        sq = torch.pdist(z, p=2).pow(2)
        return sq.mul(-self.t).exp().mean().log()


class SearchFloorLoss(nn.Module):
    """Refinery's search threshold, per batch: every query row should find its neighbours within it.

    Refinery's search (:func:`kern_finetune.evaluate.threshold_search`) returns a record's 100 nearest
    records only within the 5th percentile of pairwise distances; a record whose 100th neighbour is farther
    gets a short result list. In a batch of ``n`` rows drawn from a project of ``n_records``, the 100th of
    ``n_records`` neighbours is about the ``k = 100 * (n - 1) / n_records``-th of the batch, so the loss is
    ``mean(relu(d_k(q) - P5(batch distances)))`` over the query rows ``q``: it pulls isolated rows towards
    their neighbours and keeps dense cores from shrinking the threshold. Label-free; give it the rows
    that stand for unlabeled records.
    """

    def __init__(self, n_records: int, *, limit: int = 100, percentile: float = 5.0) -> None:
        super().__init__()
        self.n_records = n_records
        self.limit = limit
        self.percentile = percentile

    def forward(self, embeddings: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        z = F.normalize(embeddings, dim=1)
        n = z.shape[0]
        d = torch.cdist(z, z).clamp_min(0.0)
        iu = torch.triu_indices(n, n, 1, device=z.device)
        thr = torch.quantile(d[iu[0], iu[1]], self.percentile / 100.0)
        k = max(1, min(n - 1, int(round(self.limit * (n - 1) / max(self.n_records, 1)))))
        dq = d[queries].clone()
        dq[torch.arange(len(queries), device=z.device), queries] = float("inf")
        d_k = dq.kthvalue(k, dim=1).values
        return F.relu(d_k - thr).mean()


def make_loss(name: str, *, n_classes: int, dim: int, temperature: float = 0.1, margin: float = 0.5) -> nn.Module:
    """The loss named on the command line (``supcon``, ``triplet``, ``triplet-semihard``, ``cosface``)."""
    if name == "supcon":
        return SupConLoss(temperature)
    if name == "triplet":
        return TripletLoss(margin, mining="hard")
    if name == "triplet-semihard":
        return TripletLoss(margin, mining="semihard")
    if name == "cosface":
        return CosFaceLoss(n_classes, dim)
    raise ValueError(f"unknown loss {name!r}")
