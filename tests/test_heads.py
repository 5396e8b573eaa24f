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
