from __future__ import annotations

import numpy as np
import pytest
import torch

from kern_finetune.heads import SkipConnectionHead
from kern_finetune.losses import SupConLoss, TripletLoss
from kern_finetune.samplers import class_aware_batches
from kern_finetune.train import HeadTrainer


def test_head_starts_near_identity_and_folds_to_affine():
    torch.manual_seed(0)
    head = SkipConnectionHead(16)
    x = torch.randn(5, 16)
    assert torch.allclose(head(x), x, atol=0.2)
    torch.nn.init.normal_(head.gates_0)  # move away from the identity so the check means something
    head.eval()
    w, b = head.as_affine()
    assert torch.allclose(head(x), x @ w.T + b, atol=1e-5)
    assert list(head.state_dict()) == ["gates_0", "fc_0.weight", "fc_0.bias"]  # quaterion-models' keys


def test_losses_prefer_clustered_embeddings():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    clustered = torch.eye(3)[labels] + 0.01 * torch.randn(6, 3)
    shuffled = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])] + 0.01 * torch.randn(6, 3)
    for loss in (SupConLoss(), TripletLoss()):
        assert loss(clustered, labels) < loss(shuffled, labels)
        assert not list(loss.parameters())  # nothing of its own to train
    # hard triplet on perfectly separated clusters (cosine distance 1 >> margin) is zero
    assert TripletLoss()(torch.eye(3)[labels], labels) == 0


def _supcon_reference(z, y, keys, key_y, t):
    """SupCon written out row by row: anchor i against every key but itself."""
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


def test_supcon_matches_its_row_by_row_definition():
    torch.manual_seed(0)
    z = torch.randn(6, 5)
    y = torch.tensor([0, 0, 1, 1, 2, 3])  # classes 2 and 3 have no positive: those rows do not count
    assert torch.allclose(SupConLoss(0.5)(z, y), _supcon_reference(z, y, z, y, 0.5), atol=1e-6)


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
    history = a.result_.history
    assert a.result_.best_epoch >= 1 and history[0]["val_loss"] >= min(h["val_loss"] for h in history)
    assert a.result_.best_val_loss == history[a.result_.best_epoch - 1]["val_loss"] == min(h["val_loss"] for h in history)


def test_trainer_defaults_are_the_run_configs() -> None:
    """A setting a trainer shares with RunConfig defaults to RunConfig's value: no second default to drift."""
    import dataclasses
    import inspect

    from kern_finetune.config import RunConfig
    from kern_finetune.train_full import FullTrainer

    fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    # full mode's own: its epochs come from full_mode_schedule, its device resolved by from_config
    own = {HeadTrainer: set(), FullTrainer: {"epochs", "device"}}
    for trainer, exceptions in own.items():
        shared = {n: p.default for n, p in inspect.signature(trainer).parameters.items() if n in fields}
        shared = {n: v for n, v in shared.items() if n not in exceptions}
        assert shared and shared == {n: fields[n] for n in shared}, trainer
