"""What refinery's PCA-64 does to an embedding: top_10 / top_100 / top_1k, raw vs fine-tuned, before and after.

refinery reduces every attribute-level embedding it computes itself to 64 dimensions (the *model door*:
our fine-tuned ``model/`` folder served as a ``huggingface`` embedding). Exactly how, read from the sources:

- refinery-embedder ``util/embedders.py`` ``get_embedder``: ``ON_ATTRIBUTE`` with at least 64 records ->
  ``PCASentenceReducer(embedder, n_components=64)``, batch size 128;
- embedders 0.1.8 (the embedder's pinned library; code-kern-ai/embedders ``embedders/__init__.py``
  ``PCAReducer``): ``sklearn.decomposition.PCA(n_components=64)`` with sklearn's defaults (no whitening).
  The embedder pins scikit-learn 1.1.2, whose ``svd_solver="auto"`` picks ``randomized`` for 640 x 384
  (max dimension above 500, 64 < 0.8 * 384), unseeded; here ``randomized`` with ``random_state=0``, and the
  exact ``full`` solver alongside to show the choice does not matter;
  ``embedders/classification/reduce.py`` ``PCASentenceReducer._reduce``: ``fit`` on the first
  ``fit_after_n_batches=5`` batches, i.e. the **first 640 records**, then ``transform`` of every record; the
  reduced vectors are stored as they are (not re-normalised);
- record order: submodule-model ``business_objects/record.py`` ``get_attribute_data`` orders by the first
  three attributes, ``running_id`` cast to integer, so the first 640 by ``running_id`` here;
- search: refinery-neural-search ranks by **Euclidean** distance (``util.py`` ``get_distance_key``).

The *snapshot door* hands refinery our L2-normalised 384-dimensional vectors, which it stores without PCA:
Euclidean on unit vectors ranks as cosine does, so those rows are the pipeline's own figures.

Purity (``kern_finetune.evaluation.evaluate.neighbour_purity``, here also with Euclidean distance) is measured on the
pipeline's test records (no training label, with gold), as :func:`kern_finetune.evaluation.evaluate.evaluate` does.

Run the pipeline first, then::

    python -m kern_finetune run --export samples/ag_news/export.json.gz --task Topic --gold-attribute "Class Index" --out /tmp/formats_run
    python benchmarks/pca64.py --run /tmp/formats_run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import load_sample, machine, write_results

from kern_finetune.evaluation.evaluate import neighbour_purity
from kern_finetune.output.save import load_vectors

KS = (10, 100, 1000)
N_COMPONENTS = 64
FIT_RECORDS = 5 * 128  # fit_after_n_batches * batch_size


def euclidean_purity(vectors: np.ndarray, classes: np.ndarray, ks: tuple[int, ...] = KS, chunk: int = 1024) -> dict[int, float]:
    """Mean neighbour purity (percent) ranking by Euclidean distance, as refinery's search does."""
    x = vectors.astype(np.float32)
    sq = (x * x).sum(axis=1)
    n = len(x)
    kmax = min(max(ks), n - 1)
    hits_at = {k: 0.0 for k in ks}
    for start in range(0, n, chunk):
        qi = np.arange(start, min(start + chunk, n))
        d2 = sq[None, :] - 2 * (x[qi] @ x.T)  # + |q|^2, the same for every candidate of a query
        d2[np.arange(len(qi)), qi] = np.inf  # the query is not its own neighbour
        top = np.argpartition(d2, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(np.take_along_axis(d2, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.cumsum(classes[top] == classes[qi][:, None], axis=1)
        for k in ks:
            kk = min(k, kmax)
            hits_at[k] += float((hits[:, kk - 1] / kk).sum())
    return {k: 100 * v / n for k, v in hits_at.items()}


def refinery_pca64(vectors: np.ndarray, order: np.ndarray, solver: str = "randomized") -> tuple[np.ndarray, float]:
    """PCA(64) fitted on the first 640 records in refinery's record order, applied to all records."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=N_COMPONENTS, svd_solver=solver, random_state=0)
    pca.fit(vectors[order[:FIT_RECORDS]].astype(np.float64))
    return pca.transform(vectors.astype(np.float64)), float(pca.explained_variance_ratio_.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=Path("/tmp/formats_run"), help="output folder of a default run on the sample")
    args = ap.parse_args()
    t0 = time.perf_counter()
    env = machine()
    sel, base, gold = load_sample()
    ids, tuned = load_vectors(args.run / "vectors.npz")
    if ids != sel.ids:
        raise SystemExit(f"{args.run}/vectors.npz does not belong to the sample's default selection")
    test = sel.test_idx
    order = np.argsort(np.array([int(i) for i in sel.ids]), kind="stable")  # ORDER BY running_id::INTEGER

    rows = []
    for name, full in (("raw all-MiniLM-L6-v2", base), ("fine-tuned (default head run)", tuned)):
        unit = full / np.linalg.norm(full, axis=1, keepdims=True)
        cos = {k: float(100 * v.mean()) for k, v in neighbour_purity(unit[test], gold, ks=KS).items()}
        euc = euclidean_purity(unit[test], gold)
        assert all(abs(cos[k] - euc[k]) < 0.05 for k in KS), (cos, euc)  # Euclidean on unit vectors = cosine
        reduced, explained = refinery_pca64(full, order)
        pca = euclidean_purity(reduced[test], gold)
        exact = euclidean_purity(refinery_pca64(full, order, "full")[0][test], gold)
        rows.append({"embedding": name, "dims_384": cos, "pca64_euclidean": pca, "pca64_full_svd_euclidean": exact,
                     "pca64_explained_variance": explained})

    chance = float(100 * sum((gold == g).mean() ** 2 for g in np.unique(gold)))
    payload = {"machine": env, "run": str(args.run), "n_test": int(len(test)), "pca_fit_records": FIT_RECORDS,
               "chance": chance, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}
    lines = [
        "Command: `python -m kern_finetune run --export samples/ag_news/export.json.gz --task Topic "
        "--gold-attribute \"Class Index\" --out /tmp/formats_run` then `python benchmarks/pca64.py --run /tmp/formats_run`",
        "",
        f"Machine: {env}",
        "",
        f"{len(test)} test records of the bundled AG News sample (no training label, with gold); chance {chance:.2f}%. "
        f"PCA as refinery-embedder does it: sklearn `PCA(n_components=64)` fitted on the first {FIT_RECORDS} records "
        "(by running_id), applied to all 20,000, searched by Euclidean distance. 384-d = what the snapshot door "
        "hands over (L2-normalised, no PCA; Euclidean = cosine ranking).",
        "",
        "| embedding | top_10 384-d | top_10 PCA-64 | top_100 384-d | top_100 PCA-64 | top_1k 384-d | top_1k PCA-64 | variance kept by 64 PCs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d, p = r["dims_384"], r["pca64_euclidean"]
        lines.append(f"| {r['embedding']} | {d[10]:.2f} | {p[10]:.2f} | {d[100]:.2f} | {p[100]:.2f} | {d[1000]:.2f} | "
                     f"{p[1000]:.2f} | {100 * r['pca64_explained_variance']:.1f}% |")
    lines.append("")
    lines.append("Exact (`svd_solver=\"full\"`) PCA instead of sklearn 1.1.2's randomized one: " + "; ".join(
        f"{r['embedding']} top_1k {r['pca64_full_svd_euclidean'][1000]:.2f}" for r in rows) + ".")
    lines.append("")
    print("\n".join(lines))
    write_results("pca64", payload, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
