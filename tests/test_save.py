from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kern_finetune.vectors.encode import Encoder
from kern_finetune.training.heads import SkipConnectionHead
from kern_finetune.output.model_folder import save_model
from kern_finetune.output.save import load_vectors, save_vectors

TEXTS = ["Oil prices climb as supply tightens.", "Striker scores twice in derby.", "Chipmaker unveils faster processor."]


def test_saved_model_gives_head_of_encoder(tmp_path: Path):
    torch.manual_seed(0)
    head = SkipConnectionHead(384)
    torch.nn.init.normal_(head.gates_0)
    head.eval()
    enc = Encoder(cache_dir=tmp_path / "cache")
    base = enc.encode(TEXTS, progress=False)
    expected = torch.nn.functional.normalize(head(torch.from_numpy(base)), dim=1).detach().numpy()
    weight, bias = head.as_affine()
    out = save_model(enc.model(), tmp_path / "model", source=enc.path, dense=(weight.numpy(), bias.numpy()))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model-")]  # no temp folder left
    from sentence_transformers import SentenceTransformer

    loaded = SentenceTransformer(str(out), device="cpu")
    got = loaded.encode(TEXTS, convert_to_numpy=True)
    assert np.allclose(got, expected, atol=1e-5)
    # the saved model uses only built-in modules: no kern_finetune import is needed to load it
    assert "kern_finetune" not in (out / "modules.json").read_text()
    # classic module paths, which refinery-embedder's pinned sentence-transformers 2.2.2 and 3.0.1 import
    # (tests/test_model_folder.py loads the folder with them)
    import json

    types = [m["type"] for m in json.loads((out / "modules.json").read_text())]
    assert types == [f"sentence_transformers.models.{n}" for n in ("Transformer", "Pooling", "Normalize", "Dense", "Normalize")]


def test_vectors_roundtrip(tmp_path: Path):
    ids = ["a", "b"]
    vec = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    save_vectors(tmp_path / "vectors.npz", ids, vec)
    got_ids, got = load_vectors(tmp_path / "vectors.npz")
    assert got_ids == ids and np.array_equal(got, vec)
