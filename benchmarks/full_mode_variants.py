"""Quick full-mode variants on the full sample: train with `FullTrainer`, then top_1k on the test records only.

    python benchmarks/full_mode_variants.py [--seed 42] [--lr 1.5e-5] [--epochs 1] [--batch 32]
        [--temperature 0.5] [--no-group] [--trainval] [--pseudo P] [--memory ROWS] [--wise-alpha A]
        [--freeze-embeddings]
        [--save-model DIR] [--save-vectors PATH] --tag NAME
        -> appends a row to benchmarks/results/full_mode_variants.jsonl, rewrites full_mode_variants.md

Cheaper than `full_mode.py` (which runs the whole pipeline): it re-encodes only the 9,146 test records and
measures no linear probe, so a variant costs ~9-25 minutes on 2 cores instead of ~15-35. Same selection
and label check as the pipeline; `--trainval` trains on train + validation rows (no early stopping);
`--pseudo P` adds the unlabeled records a logistic regression on the base vectors predicts with p > P
(what `--pseudo-labels P` does in the pipeline); `--freeze-embeddings` keeps the word-embedding matrix
(30,522 x 384, half the encoder's weights) at its base values. BENCH_THREADS=1 when two run side by side.

Kept as a record: ``--temperature`` and ``--memory`` reach settings that the prune of issue 31 removed (the
supcon temperature is ``kern_finetune.training.losses.SUPCON_TEMPERATURE``; the cross-batch memory left the package;
``docs/decisions.md``). The script runs as written at commit 3cc078b or earlier.
"""
import argparse
import json
import os
import time

import numpy as np
import torch

from _common import RESULTS, load_sample, machine, top_1k
from kern_finetune.config import RunConfig, default_cache_dir
from kern_finetune.vectors.encode import Encoder
from kern_finetune.labels.label_check import find_label_issues, without_label_issues
from kern_finetune.labels.pseudo import find_pseudo_labels, with_pseudo_labels
from kern_finetune.training import train_full
from kern_finetune.training.train_full import FullTrainer


def write_table() -> None:
    """Rewrite full_mode_variants.md from every row in full_mode_variants.jsonl."""
    rows = [json.loads(line) for line in (RESULTS / "full_mode_variants.jsonl").read_text().splitlines() if line.strip()]
    lines = ["Command: `python benchmarks/full_mode_variants.py --tag NAME [options as in each row]` (one seed per row; "
             "BENCH_THREADS=1 when two ran side by side)", "",
             "| tag | seed | rounds | encoder lr | epochs | batch | t | grouped by length | train+val | pseudo p > | memory rows | WiSE alpha | word emb. frozen | top_1k | threads | train s | total s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['tag']} | {r['seed']} | {r.get('rounds', 1)} | {r['lr']:g} | {r['epochs']} | {r['batch']} | {r['temperature']:g} | "
                     f"{'no' if r['no_group'] else 'yes'} | {'yes' if r['trainval'] else 'no'} | "
                     f"{r['pseudo'] if r.get('pseudo') is not None else 'off'} | {r.get('memory') or 'off'} | {r.get('wise_alpha', 1):g} | {'yes' if r.get('freeze_embeddings') else 'no'} | {r['top_1k']:.2f} | {r.get('threads', '?')} | {r['train_s']} | {r['total_s']} |")
    lines += ["", "top_1k over all 9,146 test queries (raw: 51.61). `train s` = fine-tuning incl. validation; `total s` adds "
              "re-encoding the test records. Ungrouped seed-42 reference (full pipeline): 74.32, full_mode.md. Blends of "
              "saved models with the base weights at several alphas: wise_sweep.md."]
    (RESULTS / "full_mode_variants.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--lr", type=float, default=1.5e-5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.5)
    ap.add_argument("--loss", default="supcon")
    ap.add_argument("--no-group", action="store_true")
    ap.add_argument("--memory", type=int, default=0, help="cross-batch memory rows (supcon); the pipeline's default is 512")
    ap.add_argument("--wise-alpha", type=float, default=1.0,
                    help=f"blend with the base weights (the pipeline's default is {RunConfig().wise_alpha}); 1 = as fine-tuned")
    ap.add_argument("--trainval", action="store_true")
    ap.add_argument("--freeze-embeddings", action="store_true", help="do not train the word-embedding matrix")
    ap.add_argument("--tag", default="")
    ap.add_argument("--pseudo", type=float, default=None)
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --pseudo: round 2+ re-fits from the base model with pseudo-labels from the previous "
                         "round's fine-tuned vectors (all records re-encoded in between)")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the .md from the .jsonl")
    ap.add_argument("--save-vectors", default=None, metavar="PATH",
                    help="also encode every record with the fine-tuned model and save them to PATH (.npy), "
                         "for experiments on top of the fine-tuned vectors")
    ap.add_argument("--save-model", default=None, metavar="DIR", help="also save the fine-tuned model to DIR")
    a = ap.parse_args()
    if a.table_only:
        write_table()
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    sel, base, gold = load_sample(seed=a.seed)
    sel = without_label_issues(sel, find_label_issues(base, sel, seed=a.seed))
    if a.trainval:
        sel.train_idx, sel.val_idx = np.sort(np.concatenate([sel.train_idx, sel.val_idx])), sel.val_idx[:0]
    cfg = RunConfig(task="Topic", mode="full", seed=a.seed, encoder_lr=a.lr, temperature=a.temperature, loss=a.loss)
    enc = Encoder(cache_dir=default_cache_dir())
    if a.freeze_embeddings:  # FullTrainer loads its own copy of the model: freeze the matrix as it is loaded
        load = train_full.load_sentence_transformer

        def load_frozen(path, *, device=None):  # type: ignore[no-untyped-def]
            model = load(path, device=device)
            model[0].auto_model.embeddings.word_embeddings.weight.requires_grad_(False)
            return model

        train_full.load_sentence_transformer = load_frozen  # type: ignore[assignment]
    t = time.perf_counter()
    source, n_pseudo = base, []
    for round_ in range(max(1, a.rounds)):
        train_sel = sel
        if a.pseudo is not None:
            found = find_pseudo_labels(source, sel, threshold=a.pseudo, seed=a.seed)
            train_sel = with_pseudo_labels(sel, found)
            n_pseudo.append(len(found["indices"]))
            print("round", round_ + 1, "pseudo-labels", len(found["indices"]), flush=True)
        trainer = FullTrainer.from_config(cfg, model_path=enc.path, epochs=a.epochs, batch_size=a.batch,
                                          group_by_length=not a.no_group, progress=False,
                                          encoder_memory=a.memory, wise_alpha=a.wise_alpha)
        tr, va = train_sel.train_idx, train_sel.val_idx
        trainer.fit([train_sel.texts[i] for i in tr], train_sel.y[tr], [train_sel.texts[i] for i in va], train_sel.y[va])
        model, info = trainer.model_, trainer.result_.to_dict()
        if round_ + 1 < a.rounds:
            source = model.encode(sel.texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True,
                                  show_progress_bar=False)
            print("round", round_ + 1, "top_1k", round(top_1k(source[sel.test_idx], gold), 2), flush=True)
    t_train = time.perf_counter() - t
    test_texts = [sel.texts[i] for i in sel.test_idx]
    v = model.encode(test_texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    t_all = time.perf_counter() - t
    if a.save_model:
        model.save(a.save_model)
    if a.save_vectors:
        np.save(a.save_vectors, model.encode(sel.texts, batch_size=64, convert_to_numpy=True,
                                             normalize_embeddings=True, show_progress_bar=False).astype(np.float32))
    row = dict(vars(a), top_1k=round(top_1k(v, gold), 2), raw=round(top_1k(base[sel.test_idx], gold), 2), train_s=round(t_train), total_s=round(t_all),
               best_step=info["best_step"], steps=info["steps"], n_pseudo=n_pseudo, hist=[(h["step"], round(h["val_loss"], 4)) for h in info["history"]])
    row["machine"], row["threads"] = machine(), torch.get_num_threads()
    print(json.dumps(row))
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "full_mode_variants.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    write_table()


if __name__ == "__main__":
    main()
