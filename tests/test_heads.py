from __future__ import annotations

import numpy as np
import pytest
import torch

from kern_finetune.training.heads import SkipConnectionHead
from kern_finetune.training.losses import SupConLoss, TripletLoss
from kern_finetune.training.samplers import class_aware_batches
from kern_finetune.training.train import HeadTrainer


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
    from kern_finetune.evaluation.evaluate import top_k_purity

    before = top_k_purity(x[500:], y[500:], ks=(10,))["10"]
    after = top_k_purity(a.transform(x[500:]), y[500:], ks=(10,))["10"]
    assert after > before + 5
    history = a.result_.history
    assert a.result_.best_epoch >= 1 and history[0]["val_loss"] >= min(h["val_loss"] for h in history)
    assert a.result_.best_val_loss == history[a.result_.best_epoch - 1]["val_loss"] == min(h["val_loss"] for h in history)


def _every_class_in_every_batch(y: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The sampler as it was before issue 30 (item 5), verbatim: what a project whose classes fit keeps."""
    classes = np.unique(y)
    per_class = max(2, batch_size // len(classes))
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    cursor = {c: 0 for c in classes}
    batches = []
    for _ in range(max(1, int(np.ceil(len(y) / batch_size)))):
        parts = []
        for c in classes:
            pool = pools[c]
            take = min(per_class, len(pool))
            if cursor[c] + take > len(pool):
                pools[c] = pool = rng.permutation(pool)
                cursor[c] = 0
            parts.append(pool[cursor[c] : cursor[c] + take])
            cursor[c] += take
        batches.append(rng.permutation(np.concatenate(parts)))
    return batches


@pytest.mark.parametrize("n_classes, batch_size", [(4, 256), (3, 30), (128, 256), (20, 40)])
def test_class_aware_batches_are_unchanged_when_the_classes_fit(n_classes: int, batch_size: int) -> None:
    y = np.random.default_rng(5).integers(0, n_classes, 1500)
    got = class_aware_batches(y, batch_size, np.random.default_rng(7))
    want = _every_class_in_every_batch(y, batch_size, np.random.default_rng(7))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_the_default_training_computes_what_it_did_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same losses, epoch by epoch, as with the sampler before item 5, on a project whose classes fit."""
    from kern_finetune.training import train

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 700)
    x = (rng.normal(size=(4, 32))[y] * 0.3 + rng.normal(size=(700, 32))).astype(np.float32)
    kw = dict(epochs=3, batch_size=64, patience=3, seed=3, progress=False)
    now = HeadTrainer(**kw).fit(x[:500], y[:500], x[500:], y[500:]).result_.history
    monkeypatch.setattr(train, "class_aware_batches", _every_class_in_every_batch)
    before = HeadTrainer(**kw).fit(x[:500], y[:500], x[500:], y[500:]).result_.history
    assert [(h["train_loss"], h["val_loss"]) for h in now] == [(h["train_loss"], h["val_loss"]) for h in before]


@pytest.mark.parametrize("n_classes, sizes", [(2000, "two"), (300, "uneven"), (129, "two")])
def test_many_classes_make_batches_of_about_batch_size(n_classes: int, sizes: str) -> None:
    """More classes than fit in a batch (issue 30, item 5): each batch holds two rows of each of at most
    ``batch_size // 2`` classes, every class is seen in an epoch, no row twice in a batch, seeded."""
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(n_classes), 2) if sizes == "two" else rng.integers(0, n_classes, 5000)
    y = y * 3 + 7  # class labels need not be 0..n-1
    batches = class_aware_batches(y, 256, np.random.default_rng(2))
    again = class_aware_batches(y, 256, np.random.default_rng(2))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    counts = np.bincount(np.searchsorted(np.unique(y), y))
    seen = set()
    for b in batches:
        assert len(b) <= 256 and len(np.unique(b)) == len(b)
        classes, per = np.unique(y[b], return_counts=True)
        assert len(classes) <= 128
        assert np.array_equal(per, np.minimum(2, counts[np.searchsorted(np.unique(y), classes)]))
        seen |= set(classes.tolist())
    assert seen == set(y.tolist())
    assert len(batches) == max(int(np.ceil(len(y) / 256)), int(np.ceil(n_classes / 128)))
    assert len(np.concatenate(batches)) >= 0.8 * min(len(y), 2 * n_classes)


def test_many_classes_train_in_batches_of_about_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head trainer's steps see batches near ``batch_size`` with 2,000 classes, not the whole training set."""
    from kern_finetune.training import train

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2000), 2)
    x = rng.normal(size=(4000, 16)).astype(np.float32)
    seen: list[int] = []
    sampler = train.class_aware_batches

    def spy(yy, bs, r):
        out = sampler(yy, bs, r)
        seen.extend(len(b) for b in out)
        return out

    monkeypatch.setattr(train, "class_aware_batches", spy)
    HeadTrainer(epochs=1, batch_size=256, progress=False).fit(x[:3000], y[:3000], x[3000:], y[3000:])
    assert seen and max(seen) <= 256


def test_trainer_defaults_are_the_run_configs() -> None:
    """A setting a trainer shares with RunConfig defaults to RunConfig's value: no second default to drift."""
    import dataclasses
    import inspect

    from kern_finetune.config import RunConfig
    from kern_finetune.training.train_full import FullTrainer
    from kern_finetune.training.train_quaterion import QuaterionTrainer

    fields = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    # full mode's own: its epochs come from full_mode_schedule, its device resolved by from_config
    own = {HeadTrainer: set(), QuaterionTrainer: set(), FullTrainer: {"epochs", "device"}}
    for trainer, exceptions in own.items():
        shared = {n: p.default for n, p in inspect.signature(trainer).parameters.items() if n in fields}
        shared = {n: v for n, v in shared.items() if n not in exceptions}
        assert shared and shared == {n: fields[n] for n in shared}, trainer
