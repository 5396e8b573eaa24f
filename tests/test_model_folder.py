"""The model door: the folder a run writes loads in refinery's embedder and carries what its search needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embedder_libs import EMBEDDER_PINS, encode_with


@pytest.fixture(scope="module")
def head_run(default_head_run):
    """A default head-mode run (label check, head, base share chosen by the replay, smoothing, spread): the
    session's one ``kern-finetune run`` on the subset (conftest's default_head_run), as its RunResult."""
    return default_head_run.result


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("version", sorted(EMBEDDER_PINS))
def test_refinerys_embedder_loads_the_run_folder_and_gets_our_vectors(head_run, version, tmp_path):
    """sentence-transformers 2.2.2 (CPU embedder) and 3.0.1 (GPU embedder), with transformers 4.41.2, load
    ``model/`` as written by a run and give the vectors the run evaluated for the model door."""
    texts = head_run.selection.texts[:64]
    got = encode_with(version, head_run.model_dir, texts, tmp_path)
    assert got.shape == head_run.model_vectors[:64].shape
    assert _cosines(got, head_run.model_vectors[:64]).min() >= 0.9999


@pytest.mark.parametrize("version", sorted(EMBEDDER_PINS))
def test_a_fine_tuned_encoder_folder_loads_there_too(version, shared_cache, tmp_path):
    """Full mode writes the trained transformer's weights: they load in the embedder's releases too."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.vectors.encode import Encoder
    from kern_finetune.output.model_folder import save_model

    encoder = Encoder(cache_dir=shared_cache)
    model = SentenceTransformer(str(encoder.path), device="cpu")
    with torch.no_grad():  # stands in for training: every weight moved
        for p in model[0].auto_model.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    out = save_model(model, tmp_path / "model", source=encoder.path, fine_tuned=True)
    texts = ["Oil prices climb as supply tightens.", "Striker scores twice in derby.", "Chipmaker unveils a processor."]
    ours = model.encode(texts, normalize_embeddings=True)
    assert _cosines(SentenceTransformer(str(out), device="cpu").encode(texts), ours).min() >= 0.9999
    assert _cosines(encode_with(version, out, texts, tmp_path / "work"), ours).min() >= 0.9999
    base = SentenceTransformer(str(encoder.path), device="cpu").encode(texts, normalize_embeddings=True)
    assert _cosines(ours, base).min() < 0.9999  # the folder holds the trained weights, not the base model's


def test_the_folder_is_written_in_the_classic_layout(head_run):
    """Only the keys sentence-transformers 2.2.2's constructors take (newer keys make it fail)."""
    folder = head_run.model_dir
    modules = json.loads((folder / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling", "Normalize", "Dense", "Normalize"]
    assert all(m["type"].startswith("sentence_transformers.models.") for m in modules)
    assert set(json.loads((folder / "sentence_bert_config.json").read_text())) == {"max_seq_length", "do_lower_case"}
    assert set(json.loads((folder / "1_Pooling" / "config.json").read_text())) == {
        "word_embedding_dimension", "pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens"}
    dense = json.loads((folder / "3_Dense" / "config.json").read_text())
    assert dense["activation_function"] == "torch.nn.modules.linear.Identity"
    assert (folder / "3_Dense" / "pytorch_model.bin").is_file()
    assert "kern_finetune" not in (folder / "modules.json").read_text()


def test_the_model_gives_the_model_door_vectors_and_the_pushed_vectors_follow_from_its_head(head_run, shared_cache):
    """In-process (today's sentence-transformers): the folder gives ``model_vectors``; its Dense layer's first
    rows are the head (scaled), whose output, smoothed and spread as metrics.json says, is vectors.npz."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.vectors.encode import Encoder
    from kern_finetune.output.save import load_vectors
    from kern_finetune.vectors.smooth import base_neighbours, smooth
    from kern_finetune.vectors.spread import lift, local_radius

    texts = head_run.selection.texts
    rows = slice(None, None, 8)  # the folder encodes row by row: every 8th record shows it (1,000 took ~20 s)
    got = SentenceTransformer(str(head_run.model_dir), device="cpu").encode(texts[rows], normalize_embeddings=True)
    assert np.abs(got - head_run.model_vectors[rows]).max() < 1e-4
    metrics, door = head_run.metrics, head_run.metrics["model_door"]
    base = Encoder(cache_dir=shared_cache).encode(texts, progress=False)
    state = torch.load(head_run.model_dir / "3_Dense" / "pytorch_model.bin")
    dim = base.shape[1]
    assert state["linear.weight"].shape[0] == (2 * dim if door["share"] > 0 else dim)
    head = base @ state["linear.weight"][:dim].numpy().T.astype(np.float64) + state["linear.bias"][:dim].numpy()
    head = (head / np.linalg.norm(head, axis=1, keepdims=True)).astype(np.float32)
    if metrics["smoothing"]["weight"]:
        head = smooth(head, base_neighbours(base)[0], metrics["smoothing"]["weight"])
    if metrics["spread"]["strength"]:
        head = lift(head, local_radius(head)[0], metrics["spread"]["strength"])
    ids, pushed = load_vectors(head_run.out_dir / "vectors.npz")
    assert ids == head_run.ids and np.abs(head - pushed).max() < 1e-4


def test_every_run_judges_both_doors_and_refinerys_stock_embedding(head_run):
    search = head_run.metrics["threshold_search"]
    assert {"raw", "finetuned", "stock", "model_door"} <= set(search)
    door = head_run.metrics["model_door"]
    assert door["chosen"] and door["n_queries"] > 0 and door["table"][-1]["share"] == door["share"]


def test_the_base_share_keeps_refinerys_search_lists_full(subset_sel, subset_base):
    """A head that stretches the class-centroid directions starves refinery's threshold search; the chosen base
    share brings the short lists back within the margin of refinery's stock embedding, where 0 would not."""
    from kern_finetune.vectors.base_share import SHARES, fits, head_door

    dim = subset_base.shape[1]
    labeled = subset_sel.labeled_idx
    centroids = np.stack([subset_base[labeled][subset_sel.y[labeled] == c].mean(0) for c in range(len(subset_sel.classes))])
    # a linear "head" that doubles each record's component in the span of the class centroids
    weight = np.eye(dim) + centroids.T @ np.linalg.pinv(centroids.T)
    door = head_door(weight, np.zeros(dim), subset_base, subset_sel.ids, seed=42)
    assert door.chosen and door.share > 0
    assert door.table[0]["share"] == 0 and not fits(door.table[0], door.stock)
    assert fits(door.table[-1], door.stock) and door.share == door.table[-1]["share"]
    assert [row["share"] for row in door.table] == list(SHARES[: len(door.table)])  # smallest first, stops at the fit
    identity = head_door(np.eye(dim), np.zeros(dim), subset_base, subset_sel.ids, seed=42)
    assert identity.share == 0  # the base model itself starves nothing: no share needed
