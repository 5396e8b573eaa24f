"""The model door: the folder a run writes loads in refinery's embedder and carries what its search needs."""

from __future__ import annotations

import json

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


TEXTS = ["Oil prices climb as supply tightens.", "Striker scores twice in derby.", "Chipmaker unveils a processor."]


@pytest.fixture(scope="module")
def other_folders(shared_cache, tmp_path_factory):
    """The two other folders a run can write, each with the vectors it must give for :data:`TEXTS`: full mode's
    (the trained transformer's weights; every weight moved here, standing in for training) and the stock
    embedding's (head mode when the head is dropped: an identity ``Dense``)."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.output.model_folder import save_model
    from kern_finetune.vectors.encode import Encoder

    encoder = Encoder(cache_dir=shared_cache)
    root = tmp_path_factory.mktemp("folders")
    model = SentenceTransformer(str(encoder.path), device="cpu")
    with torch.no_grad():
        for p in model[0].auto_model.parameters():
            p.add_(0.01 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    tuned = save_model(model, root / "fine-tuned", source=encoder.path, fine_tuned=True)
    dim = 384
    stock = save_model(encoder.model(), root / "stock", source=encoder.path, dense=(np.eye(dim), np.zeros(dim)))
    base = encoder.encode(TEXTS, progress=False)
    ours = model.encode(TEXTS, normalize_embeddings=True)
    assert _cosines(ours, base).min() < 0.9999  # the fine-tuned folder holds the moved weights, not the base model's
    return {"fine-tuned": (tuned, ours), "stock": (stock, base)}


@pytest.mark.parametrize("version", sorted(EMBEDDER_PINS))
def test_refinerys_embedder_loads_every_folder_we_write_and_gets_our_vectors(head_run, other_folders, version,
                                                                             tmp_path):
    """sentence-transformers 2.2.2 (CPU embedder) and 3.0.1 (GPU embedder), with transformers 4.41.2, load
    ``model/`` as a default run writes it and give the vectors the run evaluated for the model door; and
    the folders of full mode and of the stock embedding give theirs."""
    texts = head_run.selection.texts[:64]
    jobs = [(head_run.model_dir, texts)] + [(folder, TEXTS) for folder, _ in other_folders.values()]
    run_got, *others = encode_with(version, jobs, tmp_path)
    assert run_got.shape == head_run.model_vectors[:64].shape
    assert _cosines(run_got, head_run.model_vectors[:64]).min() >= 0.9999
    for (name, (_, want)), got in zip(other_folders.items(), others):
        assert _cosines(got, want).min() >= 0.9999, name


def test_the_other_folders_load_in_todays_sentence_transformers(other_folders):
    from sentence_transformers import SentenceTransformer

    for name, (folder, want) in other_folders.items():
        assert _cosines(SentenceTransformer(str(folder), device="cpu").encode(TEXTS), want).min() >= 0.9999, name


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


def test_the_model_gives_the_model_door_vectors_and_the_written_vectors_follow_from_its_head(head_run, shared_cache):
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
    assert door["share"] is not None  # the subset's head beats the stock on its validation labels: the folder keeps it
    base = Encoder(cache_dir=shared_cache).encode(texts, progress=False)
    state = torch.load(head_run.model_dir / "3_Dense" / "pytorch_model.bin")
    dim = base.shape[1]
    assert state["linear.weight"].shape[0] == (2 * dim if door["share"] else dim)
    head = base @ state["linear.weight"][:dim].numpy().T.astype(np.float64) + state["linear.bias"][:dim].numpy()
    head = (head / np.linalg.norm(head, axis=1, keepdims=True)).astype(np.float32)
    if metrics["smoothing"]["weight"]:
        head = smooth(head, base_neighbours(base)[0], metrics["smoothing"]["weight"])
    if metrics["spread"]["strength"]:
        head = lift(head, local_radius(head)[0], metrics["spread"]["strength"])
    ids, written = load_vectors(head_run.out_dir / "vectors.npz")
    assert ids == head_run.ids and np.abs(head - written).max() < 1e-4


def test_every_run_judges_both_doors_and_refinerys_stock_embedding(head_run):
    search = head_run.metrics["threshold_search"]
    assert {"raw", "finetuned", "stock", "model_door"} <= set(search)
    door = head_run.metrics["model_door"]
    assert door["chosen"] and door["n_queries"] > 0 and door["n_held_out"] > 0
    assert door["share"] is None or {"share": door["share"], "fits": True}.items() <= next(
        r for r in door["table"] if r["share"] == door["share"]).items()


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


def test_paired_counts_the_queries_both_candidates_count():
    from kern_finetune.vectors.base_share import paired

    mean, se = paired(np.array([1.0, 2.0, 3.0, np.nan]), np.array([0.0, 0.0, 1.0, 5.0]))
    assert mean == pytest.approx(5 / 3) and se == pytest.approx(np.std([1.0, 2.0, 2.0], ddof=1) / np.sqrt(3))
    assert np.isnan(paired(np.array([np.nan, 1.0]), np.array([1.0, np.nan]))[0])


def _screens(n: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The stock's first screens on ``n`` held-out queries, and a per-query wobble of +-1 that averages 0."""
    return np.tile([6.0, 7.0, 8.0, 9.0], n // 4), np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def test_choose_gives_the_stock_unless_a_share_beats_it_on_the_held_out_first_screen():
    from kern_finetune.vectors.base_share import MIN_Z, choose, paired

    stock, wobble = _screens()
    se = paired(stock + wobble, stock)[1]  # 0.1005: the +-1 wobble over 100 queries
    assert choose(stock, []) is None  # no share fits the short-list rule: the stock embedding
    assert choose(stock, [(0.5, stock + wobble), (1.0, stock.copy())]) is None  # as good on average: the stock
    assert choose(stock, [(1.0, stock + wobble + 1.1 * MIN_Z * se)]) == 1.0
    assert choose(stock, [(1.0, stock + wobble + 0.9 * MIN_Z * se)]) is None  # ahead, but within the noise
    missed = stock + wobble + 1.1 * MIN_Z * se
    missed[:50] = np.nan  # queries a candidate does not count leave the pair (not counted as 0)...
    assert paired(missed, stock)[0] == pytest.approx(1.1 * MIN_Z * se)
    assert choose(stock, [(1.0, missed)]) is None  # ...and the same lead on 50 queries is within their noise (0.143)


def test_choose_takes_the_share_that_beats_the_stock_by_most_and_the_smaller_only_on_a_tie():
    from kern_finetune.vectors.base_share import choose

    stock, wobble = _screens()
    best = stock + 0.5
    half = stock + 0.25 * (1 - wobble)  # +0.5 on every second query: beats the stock, trails 1.0 by 0.25
    assert choose(stock, [(1.0, best), (0.5, half)]) == 1.0
    assert choose(stock, [(1.0, best), (0.5, best - 0.01)]) == 1.0  # a hair lower first screen: not taken
    assert choose(stock, [(1.0, best), (0.5, best[::-1])]) == 0.5  # as far ahead on average (+0.5): the smaller
    assert choose(stock, [(1.5, best + 0.01), (0.25, stock + wobble), (0.5, half), (1.0, best)]) == 1.5
    assert choose(stock, [(0.25, stock + wobble), (0.5, half)]) == 0.5  # 0.25 does not beat the stock


def test_a_head_that_adds_nothing_gives_the_stock_embedding(subset_sel, subset_base):
    """The identity head beside any share searches as the base model does: no share beats refinery's stock
    embedding on the held-out labels, so the folder gives the stock embedding (an identity Dense)."""
    from kern_finetune.vectors.base_share import SHARES, head_door

    dim = subset_base.shape[1]
    door = head_door(np.eye(dim), np.zeros(dim), subset_base, subset_sel.ids, sel=subset_sel, seed=42)
    assert door.chosen and door.gives_stock and door.share is None and door.n_held_out >= 50
    assert [r["share"] for r in door.table] == list(SHARES) and all(r["fits"] for r in door.table)
    assert all(r["vs_stock"] == pytest.approx(0.0, abs=0.05) for r in door.table)
    assert np.array_equal(door.weight, np.eye(dim)) and not door.bias.any()
    assert np.allclose(door.transform(subset_base), subset_base, atol=1e-6)
    assert door.to_dict()["share"] is None and door.to_dict()["gives_stock"]


def _four_class_project(n: int = 2000, dim: int = 32, seed: int = 0):
    """Base vectors with a weak class signal along 4 orthonormal directions (``centres``); a quarter of the
    records train, a quarter validate (labels known), the rest are the test records."""
    from kern_finetune.labels.select import Selection

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, size=n)
    centres = np.linalg.qr(rng.normal(size=(dim, 4)))[0].T
    x = 0.6 * centres[y] + rng.normal(size=(n, dim)) / np.sqrt(dim)
    base = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    order = rng.permutation(n)
    train, val, test = np.sort(order[: n // 4]), np.sort(order[n // 4 : n // 2]), np.sort(order[n // 2 :])
    labels = np.full(n, -1)
    labels[train], labels[val] = y[train], y[val]
    sel = Selection(ids=[str(i) for i in range(n)], texts=[""] * n, classes=list("abcd"), y=labels,
                    source=["manual"] * n, confidence=np.full(n, np.nan), train_idx=train, val_idx=val,
                    test_idx=test, gold=[None] * n)
    return base, sel, centres


def test_a_head_that_separates_the_classes_keeps_the_share_that_beats_the_stock_by_most():
    """A head that doubles the class directions starves the search below share 2.25; of the fitting shares,
    the one whose held-out first screen is furthest ahead of the stock's is kept, not the smallest."""
    from kern_finetune.vectors.base_share import MIN_Z, head_door

    base, sel, centres = _four_class_project()
    dim = base.shape[1]
    door = head_door(np.eye(dim) + centres.T @ centres, np.zeros(dim), base, sel.ids, sel=sel, seed=42)
    assert door.n_held_out == len(sel.val_idx) and not door.gives_stock
    fitting = [r for r in door.table if r["fits"]]
    assert fitting[0]["share"] == 2.25 and not door.table[0]["fits"]  # the short-list rule alone would take 2.25
    winners = [r for r in fitting if r["vs_stock"] > MIN_Z * r["vs_stock_se"]]
    chosen = next(r for r in door.table if r["share"] == door.share)
    assert chosen in winners and chosen["vs_stock"] == max(r["vs_stock"] for r in winners)
    assert door.share > fitting[0]["share"] and chosen["vs_stock"] > fitting[0]["vs_stock"]
    assert chosen["held_out_first_screen"] > door.stock["held_out_first_screen"] + 0.05


def test_a_head_that_blurs_the_classes_gives_the_stock_embedding():
    """A head that removes most of the class directions: every share's held-out first screen is measurably
    below the stock's, so the folder gives the stock embedding though every share fits the short-list rule."""
    from kern_finetune.vectors.base_share import MIN_Z, head_door

    base, sel, centres = _four_class_project()
    dim = base.shape[1]
    door = head_door(np.eye(dim) - 0.9 * centres.T @ centres, np.zeros(dim), base, sel.ids, sel=sel, seed=42)
    assert door.gives_stock and all(r["fits"] for r in door.table)
    assert all(r["vs_stock"] < -MIN_Z * r["vs_stock_se"] for r in door.table)
    fixed = head_door(np.eye(dim) - 0.9 * centres.T @ centres, np.zeros(dim), base, sel.ids, share=0.0, seed=42)
    assert fixed.share == 0.0 and not fixed.chosen  # a fixed share is kept as given, whatever the labels say


def test_the_stock_folders_card_says_what_it_is():
    """The folder written when the head is dropped (an identity Dense; it loads and gives the base vectors:
    the tests above) says so on its card."""
    from kern_finetune.output.model_card import model_card

    card = model_card({"task": "Topic"}, fine_tuned=False, share=None)
    assert "refinery's stock embedding; the trained head was dropped" in card
