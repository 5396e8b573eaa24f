from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from kern_finetune.vectors.encode import Encoder, default_model_path, model_identity

TEXTS = ["Stocks fall on oil worries.", "Team wins the cup.", "New chip doubles speed.", "Stocks fall on oil worries."]


def test_cache_reuses_vectors_across_encoders(tmp_path: Path):
    a = Encoder(cache_dir=tmp_path)
    va = a.encode(TEXTS, progress=False)
    assert va.shape == (4, 384) and va.dtype == np.float32
    assert np.allclose(np.linalg.norm(va, axis=1), 1, atol=1e-5)
    assert np.array_equal(va[0], va[3])
    assert a.n_encoded_ == 3  # the duplicate text is encoded once
    b = Encoder(cache_dir=tmp_path)  # a new process would look the same: only the files are shared
    vb = b.encode(TEXTS[::-1], progress=False)
    assert b.n_encoded_ == 0 and b.n_cached_ == 4 and b._model is None  # the model was never loaded
    assert np.array_equal(vb, va[::-1])
    c = Encoder(cache_dir=tmp_path)
    c.encode(TEXTS + ["A text never seen before."], progress=False)
    assert c.n_encoded_ == 1


def test_cache_is_keyed_by_model_identity(tmp_path: Path):
    src = default_model_path()
    copy = tmp_path / "model-copy"
    shutil.copytree(src, copy)
    assert model_identity(copy) == model_identity(src)
    cfg = copy / "config.json"
    cfg.write_text(cfg.read_text().replace("}", ', "kern_test": 1}', 1) if cfg.read_text().count("}") else cfg.read_text())
    assert model_identity(copy) != model_identity(src)
    Encoder(cache_dir=tmp_path / "c").encode(TEXTS[:1], progress=False)
    other = Encoder(copy, cache_dir=tmp_path / "c")
    other.encode(TEXTS[:1], progress=False)
    assert other.n_encoded_ == 1  # a different model never reads the first one's vectors
    assert len(list((tmp_path / "c").glob("vectors-*.sqlite"))) == 2
