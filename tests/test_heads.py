from __future__ import annotations

import numpy as np
import torch

from kern_finetune.heads import SkipConnectionHead
from kern_finetune.losses import CosFaceLoss, SupConLoss, TripletLoss
from kern_finetune.train import HeadTrainer, class_aware_batches


def test_head_starts_near_identity_and_folds_to_affine():
    torch.manual_seed(0)
    head = SkipConnectionHead(16, n_layers=3)
    x = torch.randn(5, 16)
    assert torch.allclose(head(x), x, atol=0.2)
    for i in range(3):  # move away from the identity so the check means something
        torch.nn.init.normal_(getattr(head, f"gates_{i}"))
    head.eval()
    w, b = head.as_affine()
    assert torch.allclose(head(x), x @ w.T + b, atol=1e-5)


def test_losses_prefer_clustered_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = torch.eye(3)[labels] + 0.01 * torch.randn(6, 3)
    shuffled = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.01 * torch.randn(6, 3)
    for loss in (SupConLoss(0.1), TripletLoss(0.5, "hard"), TripletLoss(0.5, "semihard")):
        assert loss(clustered, labels) < loss(shuffled, labels)
    # hard triplet on perfectly separated clusters (cosine distance 1 >> margin) is zero
    assert TripletLoss(0.5, "hard")(torch.eye(3)[labels], labels) == 0
    cos = CosFaceLoss(3, 3)
    assert len(list(cos.parameters())) == 1


def test_weights_zero_out_rows():
    labels = torch.tensor([0, 0, 1, 1])
    emb = torch.randn(4, 8)
    loss = SupConLoss(0.1)
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert torch.isfinite(loss(emb, labels, w))


def _supcon_reference(z, y, keys, key_y, t):
    """SupCon written out row by row: anchor i against every key but itself (keys[:n] is the batch)."""
    z = torch.nn.functional.normalize(z, dim=1)
    keys = torch.nn.functional.normalize(keys, dim=1)
    rows = []
    for i in range(len(z)):
        others = [j for j in range(len(keys)) if j != i]
        logits = torch.stack([z[i] @ keys[j] / t for j in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = [k for k, j in enumerate(others) if key_y[j] == y[i]]
        if pos:
            rows.append(-log_prob[pos].mean())
    return torch.stack(rows).mean()


def test_supcon_memory_adds_keys_but_only_batch_rows_are_anchors():
    torch.manual_seed(0)
    z = torch.randn(6, 5, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 3])  # classes 2 and 3 have no positive inside the batch
    m_z, m_y = torch.randn(4, 5), torch.tensor([2, 3, 0, 1])
    loss = SupConLoss(0.5)
    empty = (torch.zeros(0, 5), torch.zeros(0, dtype=torch.long), None)
    assert torch.allclose(loss(z, y), loss(z, y, memory=empty))
    assert torch.allclose(loss(z, y), _supcon_reference(z, y, z, y, 0.5), atol=1e-6)
    with_memory = loss(z, y, memory=(m_z, m_y, None))
    assert torch.allclose(with_memory, _supcon_reference(z, y, torch.cat([z, m_z]), torch.cat([y, m_y]), 0.5), atol=1e-6)
    with_memory.backward()
    assert z.grad is not None and bool((z.grad[4:].abs() > 0).all())  # rows 4, 5 found positives in the memory
    # all-ones weights change nothing
    assert torch.allclose(loss(z, y, torch.ones(6), memory=(m_z, m_y, torch.ones(4))), with_memory.detach(), atol=1e-6)


def test_class_aware_batches_hold_every_class():
    y = np.array([0] * 100 + [1] * 10 + [2] * 50)
    batches = class_aware_batches(y, 30, np.random.default_rng(0))
    assert len(batches) == 6
    for b in batches:
        assert set(y[b].tolist()) == {0, 1, 2} and np.bincount(y[b]).min() >= 2


def test_trainer_separates_noisy_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 32))
    y = rng.integers(0, 3, 600)
    x = (centers[y] * 0.3 + rng.normal(size=(600, 32))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kw = dict(loss="supcon", epochs=30, batch_size=96, lr=5e-2, patience=3, seed=3, progress=False)
    a = HeadTrainer(**kw).fit(x[:400], y[:400], x[400:500], y[400:500])
    b = HeadTrainer(**kw).fit(x[:400], y[:400], x[400:500], y[400:500])
    assert np.array_equal(a.transform(x[500:]), b.transform(x[500:]))
    from kern_finetune.evaluate import top_k_purity

    before = top_k_purity(x[500:], y[500:], ks=(10,))["10"]
    after = top_k_purity(a.transform(x[500:]), y[500:], ks=(10,))["10"]
    assert after > before + 5
    assert a.best_epoch_ >= 1 and a.history_[0]["val_loss"] >= min(h["val_loss"] for h in a.history_)
