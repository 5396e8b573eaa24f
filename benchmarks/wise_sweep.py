"""WiSE-FT sweep: blend a fine-tuned model's weights with the base model's, top_1k on the test records.

    python benchmarks/full_mode_variants.py --tag NAME [options] --save-model DIR   # the fine-tuned model
    python benchmarks/wise_sweep.py DIR --tag NAME --alphas 0.5,0.6,0.7,0.85,1
        -> appends rows to benchmarks/results/wise_sweep.jsonl, rewrites wise_sweep.md

For each alpha the encoder's weights become ``(1 - alpha) * base + alpha * fine-tuned`` (what
``--wise-alpha`` does in full mode, :func:`kern_finetune.train_full._interpolate`), the 9,146 test records
are re-encoded (~1 minute each on 2 cores) and top_1k is measured. Selection as in the pipeline (seed 42).
"""
import argparse
import json
import os

import torch

from _common import RESULTS, load_sample, machine, top_1k
from kern_finetune.config import default_cache_dir
from kern_finetune.encode import Encoder, load_sentence_transformer
from kern_finetune.train_full import _interpolate


def write_table() -> None:
    rows = [json.loads(line) for line in (RESULTS / "wise_sweep.jsonl").read_text().splitlines() if line.strip()]
    lines = ["Command: `python benchmarks/wise_sweep.py DIR --tag NAME --alphas A,B,...` on a model saved by "
             "`python benchmarks/full_mode_variants.py --tag NAME ... --save-model DIR` (seed 42; the row of that "
             "tag in full_mode_variants.md has its settings)", "",
             "| fine-tuned model (variant tag) | alpha | top_1k | note |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tag']} | {r['alpha']:g} | {r['top_1k']:.2f} | {r.get('note', '')} |")
    lines += ["", "alpha 1 = the fine-tuned weights as they are (each variant's top_1k in full_mode_variants.md); alpha 0 "
              "= the base model (top_1k 51.61). alpha > 1 extrapolates past the fine-tuned weights."]
    (RESULTS / "wise_sweep.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--tag", required=True, help="the full_mode_variants tag that saved the model")
    ap.add_argument("--alphas", default="0.5,0.6,0.7,0.85,1")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    sel, _, gold = load_sample(seed=a.seed)
    texts = [sel.texts[i] for i in sel.test_idx]
    base = load_sentence_transformer(Encoder(cache_dir=default_cache_dir()).path, device="cpu").state_dict()
    model = load_sentence_transformer(a.model_dir, device="cpu")
    tuned = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for alpha in [float(x) for x in a.alphas.split(",")]:
        model.load_state_dict(_interpolate(base, tuned, alpha))
        v = model.encode(texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
        row = {"tag": a.tag, "seed": a.seed, "alpha": alpha, "top_1k": round(top_1k(v, gold), 2), "machine": machine()}
        print(json.dumps(row), flush=True)
        with open(RESULTS / "wise_sweep.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        write_table()


if __name__ == "__main__":
    main()
