"""WiSE-FT sweep: blend a fine-tuned model's weights with the base model's, top_1k on the test records.

    python benchmarks/full_mode_variants.py --tag NAME [options] --save-model DIR   # the fine-tuned model
    python benchmarks/wise_sweep.py DIR --tag NAME --alphas 0.5,0.6,0.7,0.85,1 [--probe] [--val]
        -> appends rows to benchmarks/results/wise_sweep.jsonl, rewrites wise_sweep.md

For each alpha the encoder's weights become ``(1 - alpha) * base + alpha * fine-tuned`` (what
``--wise-alpha`` does in full mode, :func:`kern_finetune.training.train_full.interpolate_weights`), the 9,146 test records
are re-encoded (~1.5 minutes each on 2 cores) and top_1k is measured. Selection as in the pipeline (seed 42).
``--probe`` also re-encodes the labeled records (~3 more minutes per alpha) and fits the pipeline's linear
probe: logistic regression on the labeled records left after the label check, accuracy on the test records'
gold class, for the raw and the blended vectors. ``--val`` also re-encodes the validation records and
measures top_250 among them on their selected (manual or weak) labels: what the pipeline could use to pick
alpha without the test records' gold.
"""
import argparse
import json
import os

import numpy as np
import torch

from _common import RESULTS, load_sample, machine, top_1k
from kern_finetune.config import default_cache_dir
from kern_finetune.vectors.encode import Encoder, load_sentence_transformer
from kern_finetune.evaluation.evaluate import linear_probe, top_k_purity
from kern_finetune.labels.label_check import find_label_issues, without_label_issues
from kern_finetune.labels.select import gold_to_class
from kern_finetune.training.train_full import interpolate_weights


def write_table() -> None:
    rows = [json.loads(line) for line in (RESULTS / "wise_sweep.jsonl").read_text().splitlines() if line.strip()]
    lines = ["Command: `python benchmarks/wise_sweep.py DIR --tag NAME --alphas A,B,... [--probe] [--val]` on a model saved by "
             "`python benchmarks/full_mode_variants.py --tag NAME ... --save-model DIR` (seed 42; the row of that "
             "tag in full_mode_variants.md has its settings)", "",
             "| fine-tuned model (variant tag) | alpha | top_1k | probe acc raw -> blended (gain) | val top_250 | note |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        probe = (f"{r['probe_raw']:.2f} -> {r['probe']:.2f} ({r['probe'] - r['probe_raw']:+.2f})" if "probe" in r else "-")
        val = f"{r['val_top_250']:.2f}" if "val_top_250" in r else "-"
        lines.append(f"| {r['tag']} | {r['alpha']:g} | {r['top_1k']:.2f} | {probe} | {val} | {r.get('note', '')} |")
    lines += ["", "alpha 1 = the fine-tuned weights as they are (each variant's top_1k in full_mode_variants.md); alpha 0 "
              "= the base model (top_1k 51.61). alpha > 1 extrapolates past the fine-tuned weights. probe: the pipeline's "
              "linear probe (logistic regression on the labeled records left after the label check, accuracy on the "
              "test records' gold class), raw vectors vs the blended model's. val top_250: purity of the 250 nearest "
              "neighbours among the validation records, on their selected labels (no gold; `--val`). Every row's "
              "commit is in wise_sweep.jsonl; seven rows measured with a draft of this script before it was committed "
              "(tags b64-lr2e-5 and xbm512, no commit recorded) were dropped: no committed command made them."]
    (RESULTS / "wise_sweep.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--tag", required=True, help="the full_mode_variants tag that saved the model")
    ap.add_argument("--alphas", default="0.5,0.6,0.7,0.85,1")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--probe", action="store_true", help="also measure the linear probe (labeled records re-encoded)")
    ap.add_argument("--val", action="store_true", help="also measure top_250 among the validation records on their labels")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    sel, base_vectors, gold = load_sample(seed=a.seed)
    rows_encoded = sel.test_idx
    if a.probe:  # as the pipeline: the probe is fitted on the labels left after the label check
        sel = without_label_issues(sel, find_label_issues(base_vectors, sel, seed=a.seed))
        labeled = sel.labeled_idx
        to_class = gold_to_class(sel)  # the pipeline's own gold -> class mapping
        assert to_class is not None
        y_test = np.array([to_class[sel.gold[i]] for i in sel.test_idx])
        rows_encoded = np.concatenate([labeled, sel.test_idx])
        probe_raw = linear_probe(base_vectors[labeled], sel.y[labeled], base_vectors[sel.test_idx], y_test,
                                 labels=sel.classes, seed=a.seed)["accuracy"]
    if a.val and not a.probe:
        rows_encoded = np.concatenate([sel.val_idx, rows_encoded])
    texts = [sel.texts[i] for i in rows_encoded]
    val_rows = np.flatnonzero(np.isin(rows_encoded, sel.val_idx))  # where the validation records sit in texts
    base = load_sentence_transformer(Encoder(cache_dir=default_cache_dir()).path, device="cpu").state_dict()
    model = load_sentence_transformer(a.model_dir, device="cpu")
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for alpha in [float(x) for x in a.alphas.split(",")]:
        model.load_state_dict(interpolate_weights(base, tuned, alpha))
        v = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        v_test = v[len(v) - len(sel.test_idx):]
        row = {"tag": a.tag, "seed": a.seed, "alpha": alpha, "top_1k": round(top_1k(v_test, gold), 2)}
        if a.val:
            row["val_top_250"] = round(top_k_purity(v[val_rows], sel.y[rows_encoded[val_rows]], (250,))["250"], 2)
        if a.probe:
            n_lab = len(labeled)
            row["probe_raw"] = round(probe_raw, 2)
            row["probe"] = round(linear_probe(v[:n_lab], sel.y[labeled], v_test, y_test, labels=sel.classes,
                                              seed=a.seed)["accuracy"], 2)
        row["machine"] = machine()
        print(json.dumps(row), flush=True)
        with open(RESULTS / "wise_sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        write_table()


if __name__ == "__main__":
    main()
