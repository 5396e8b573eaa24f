"""The Quaterion engine: compat shims, QuaterionTrainer end to end, head copy, repeat fits."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from kern_finetune.training.quaterion_compat import patch_quaterion
from kern_finetune.errors import ConfigError, SelectionError
from kern_finetune.training.heads import SkipConnectionHead



def _blobs(n: int, *, seed: int, k: int = 4, dim: int = 384, signal: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Separable-but-noisy classes: a weak class centre under strong isotropic noise, L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).normal(size=(k, dim))
    y = rng.integers(0, k, n)
    x = centres[y] * signal + rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def _purity_at_10(x: np.ndarray, y: np.ndarray) -> float:
    """Mean share of each row's 10 cosine nearest neighbours (itself excluded) with its class."""
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = z @ z.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    return float((y[top] == y[:, None]).mean())


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tx, ty = _blobs(400, seed=1)
    vx, vy = _blobs(200, seed=2)
    return tx, ty, vx, vy


@pytest.fixture(scope="module")
def tq():
    """The engine module (imports quaterion through the shims)."""
    from kern_finetune.training import train_quaterion

    return train_quaterion


# ---------------------------------------------------------------------------------------------- shims


def test_shims_apply_and_quaterion_imports(tq) -> None:
    patch_quaterion()
    patch_quaterion()  # idempotent
    import numpy
    import torch.utils.data.dataloader as dl
    import torch.utils.data.dataset as ds
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from quaterion import Quaterion  # noqa: F401
    from quaterion.dataset import GroupSimilarityDataLoader  # noqa: F401
    from quaterion.distances import Distance
    from quaterion.utils.enums import TrainStage

    assert dl.T_co is dl._T_co and ds.T_co is ds._T_co
    # metric names as quaterion's callbacks expect them (Python 3.11 would give "TrainStage.VALIDATION_loss")
    assert f"{TrainStage.VALIDATION}_loss" == "validation_loss"
    assert str(TrainStage.TRAIN) == "train" and f"{Distance.COSINE}" == "cosine"
    assert TrainStage.TRAIN == "train" and {"cosine": 1}[Distance.COSINE] == 1  # equality/hash unchanged
    # numpy 2 removed np.Inf, which PL 1.9.5's callbacks use; they build now, numpy itself is untouched
    EarlyStopping(monitor="validation_loss")
    ModelCheckpoint(monitor="validation_loss")
    assert "Inf" not in vars(numpy)


# ----------------------------------------------------------------------------------------- head copy


def test_copy_head_matches_quaterion_head(tq) -> None:
    from quaterion_models.heads import SkipConnectionHead as QHead

    torch.manual_seed(0)
    q = QHead(384, n_layers=1)
    with torch.no_grad():  # move away from the near-identity start so the check means something
        for name, p in q.named_parameters():
            p.add_(torch.randn_like(p) * (1.0 if name.startswith("gates") else 0.1))
    x = np.random.default_rng(0).normal(size=(64, 384)).astype(np.float32)
    ours = tq.copy_head(q, check_on=x)
    assert isinstance(ours, SkipConnectionHead)
    assert set(ours.state_dict()) == set(q.state_dict())
    with torch.no_grad():
        xt = torch.from_numpy(x)
        torch.testing.assert_close(ours(xt), q(xt), rtol=0, atol=1e-6)
        w, b = ours.as_affine()
        torch.testing.assert_close(xt @ w.T + b, q(xt), rtol=0, atol=1e-4)


# ------------------------------------------------------------------------------------------------ fit


def test_fit_beats_identity_and_uses_quaterion_cache(tq, data, monkeypatch) -> None:
    tx, ty, vx, vy = data
    calls: list[int] = []
    original = tq.CachedVectorEncoder.forward

    def counting_forward(self, batch):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(tq.CachedVectorEncoder, "forward", counting_forward)
    lines: list[str] = []
    start = time.perf_counter()
    trainer = tq.QuaterionTrainer(loss="triplet", lr=1e-2, epochs=20, patience=3, progress=lines.append).fit(tx, ty, vx, vy)
    wall = time.perf_counter() - start
    head, result = trainer.head_, trainer.result_
    info = result.to_dict()

    # the frozen encoder ran only to fill Quaterion's cache (train + val, once), not every epoch
    assert sum(calls) == len(tx) + len(vx)
    assert isinstance(head, SkipConnectionHead) and not head.training
    assert info["engine"] == "quaterion" and info["loss"] == "triplet"
    assert 1 <= info["epochs_run"] <= 20 and len(info["history"]) == info["epochs_run"] == len(lines)
    assert info["best_val_loss"] == min(h["val_loss"] for h in info["history"])
    best = info["history"][info["best_epoch"] - 1]["val_loss"]
    assert best == info["best_val_loss"] and result.stopped_early == (info["epochs_run"] < 20)
    # the returned head is the best epoch's: its transform is the head's output, normalised
    np.testing.assert_allclose(trainer.transform(vx[:8]), torch.nn.functional.normalize(head(torch.from_numpy(vx[:8])), dim=1).detach().numpy(), atol=1e-6)
    assert 0 < info["seconds"] <= wall + 0.001 and info["n_train"] == 400  # seconds are rounded to 0.001 and info["groups"] == [0, 1, 2, 3]
    with torch.no_grad():
        tuned = head(torch.from_numpy(vx)).numpy()
    before, after = _purity_at_10(vx, vy), _purity_at_10(tuned, vy)
    assert after > before + 0.05, (before, after)


def test_two_consecutive_fits_same_seed_same_head(tq, data) -> None:
    tx, ty, vx, vy = data
    kw = dict(loss="triplet", epochs=2, patience=2, seed=7, progress=False)
    t1 = tq.QuaterionTrainer(**kw).fit(tx, ty, vx, vy)
    t2 = tq.QuaterionTrainer(**kw).fit(tx, ty, vx, vy)  # fresh loaders: a second fit must work
    h1, h2 = t1.head_, t2.head_
    assert t1.result_.history == t2.result_.history
    for (k1, v1), (k2, v2) in zip(h1.state_dict().items(), h2.state_dict().items()):
        assert k1 == k2
        torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    h3 = tq.QuaterionTrainer(**{**kw, "seed": 8}).fit(tx, ty, vx, vy).head_
    assert not torch.equal(h1.fc_0.weight, h3.fc_0.weight)


def test_supcon_trains_too(tq, data) -> None:
    tx, ty, vx, vy = data
    trainer = tq.QuaterionTrainer(loss="supcon", batch_size=64, epochs=2, progress=False)
    head, result = trainer.fit(tx[:200], ty[:200], vx[:100], vy[:100]).head_, trainer.result_
    assert result.epochs_run == 2
    assert all(np.isfinite(h["val_loss"]) for h in result.history)
    # the start gates are -4; something must have been learned
    assert not torch.allclose(head.gates_0, torch.full_like(head.gates_0, -4.0))


def test_labels_need_not_be_contiguous_ints(tq, data) -> None:
    tx, ty, vx, vy = data
    names = np.array(["World", "Sports", "Business", "Sci/Tech"])
    trainer = tq.QuaterionTrainer(loss="triplet", epochs=1, progress=False).fit(tx[:128], names[ty[:128]], vx[:64], names[vy[:64]])
    assert trainer.result_.details["groups"] == sorted(names.tolist())


def test_bad_input_is_reported(tq, data) -> None:
    tx, ty, vx, vy = data
    fit = lambda *data, **kw: tq.QuaterionTrainer(**kw).fit(*data)  # noqa: E731
    with pytest.raises(ConfigError, match="unknown loss"):
        fit(tx, ty, vx, vy, loss="nope")
    with pytest.raises(ConfigError, match="epochs"):
        fit(tx, ty, vx, vy, epochs=0)
    with pytest.raises(ConfigError, match="batch_size"):
        fit(tx, ty, vx, vy, batch_size=0)
    with pytest.raises(ConfigError, match="dims differ"):
        fit(tx, ty, vx[:, :10], vy)
    with pytest.raises(SelectionError, match="two classes"):
        fit(tx, np.zeros_like(ty), vx, vy)
    with pytest.raises(SelectionError, match="no records"):
        fit(tx, ty, vx[:0], vy[:0])
