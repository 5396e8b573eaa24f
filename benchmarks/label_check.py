"""The label check against cleanlab: which flags weak labels that are really wrong?

Ours is :func:`kern_finetune.labels.label_check.find_label_issues` (confident learning "in its simplest form": 5-fold
out-of-fold logistic regression on the base vectors; a weak label is flagged when the probability of its
own class is below that class's mean and another class is more likely). cleanlab 2.x is the maintained
library for the same idea. Both see the full bundled sample's default selection (task Topic, Title +
Description, threshold 0.7, seed 42) and only flag weak labels (manual labels are never flagged: a
cleanlab flag on a manual label is dropped). They are judged on the weak training labels whose record has
a gold value (the same audit as ``metrics.json``'s ``label_check.audit_*``): precision = flagged and
wrong / flagged, recall = flagged and wrong / wrong.

cleanlab runs in its own virtual environment (it is not a dependency of kern-finetune)::

    python3.11 -m venv /work/venvs/robust
    /work/venvs/robust/bin/pip install -c constraints.txt cleanlab numpy scikit-learn
    .venv/bin/python benchmarks/label_check.py --cleanlab-python /work/venvs/robust/bin/python

Variants: cleanlab's ``filter.find_label_issues`` on *our* out-of-fold probabilities (isolates the flagging
rule) with each ``filter_by``, and ``CleanLearning(LogisticRegression).find_label_issues`` (cleanlab's own
cross-validation, 5 folds). Timings are measured under load on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import load_sample, machine, top_1k, write_results  # noqa: E402  (sets sys.path)

from kern_finetune.config import RunConfig  # noqa: E402
from kern_finetune.labels.label_check import find_label_issues, without_label_issues  # noqa: E402
from kern_finetune.labels.select import gold_to_class  # noqa: E402

CLEANLAB_SCRIPT = r'''
import json, sys, time
import numpy as np
import cleanlab
from cleanlab.filter import find_label_issues
from cleanlab.classification import CleanLearning
from sklearn.linear_model import LogisticRegression

data = np.load(sys.argv[1])
x, y, probs, seed = data["x"], data["y"], data["pred_probs"], int(data["seed"])
out = {"version": cleanlab.__version__, "variants": {}}
for filter_by in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"):
    t = time.perf_counter()
    flags = find_label_issues(y, probs, filter_by=filter_by)
    out["variants"][f"cleanlab filter_by={filter_by}, our OOF probabilities"] = {
        "flags": flags.tolist(), "seconds": time.perf_counter() - t}
t = time.perf_counter()
cl = CleanLearning(LogisticRegression(max_iter=2000, C=1.0, random_state=seed), seed=seed, cv_n_folds=5)
issues = cl.find_label_issues(x, y)
out["variants"]["cleanlab CleanLearning(LogisticRegression), own 5-fold OOF, default filter"] = {
    "flags": issues["is_label_issue"].to_numpy().tolist(), "seconds": time.perf_counter() - t}
json.dump(out, open(sys.argv[2], "w"))
'''


def _scores(flags: np.ndarray, weak: np.ndarray, audited: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    flags = flags & weak  # manual labels are never flagged
    on_audit = flags & audited
    tp = int((on_audit & wrong).sum())
    precision = tp / on_audit.sum() if on_audit.any() else float("nan")
    recall = tp / wrong.sum()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"n_flagged_weak": int(flags.sum()), "n_flagged_audited": int(on_audit.sum()), "flagged_wrong": tp,
            "precision": round(100 * float(precision), 2), "recall": round(100 * float(recall), 2),
            "f1": round(100 * float(f1), 2)}


def _train_default_head(base: np.ndarray, sel, seed: int) -> np.ndarray:
    """The pipeline's default head training (native engine, supcon) on ``sel``; returns every record's vector."""
    import torch

    from kern_finetune.training.train import HeadTrainer

    c = RunConfig(seed=seed)
    torch.manual_seed(seed)
    tr = HeadTrainer(loss=c.loss, epochs=c.epochs, seed=seed, progress=False)
    tr.fit(base[sel.train_idx], sel.y[sel.train_idx], base[sel.val_idx], sel.y[sel.val_idx])
    return tr.transform(base)[sel.test_idx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cleanlab-python", default="/work/venvs/robust/bin/python",
                        help="python of a virtual environment with cleanlab installed")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-seeds", default="42,43,44",
                        help="downstream: train the default head after dropping each method's flags, with these seeds")
    args = parser.parse_args()

    sel, base, gold = load_sample(args.seed)
    idx = sel.labeled_idx
    y = sel.y[idx]
    weak = np.array([sel.source[i] == "weak" for i in idx])
    mapping = gold_to_class(sel)
    assert mapping is not None
    audited = np.array([sel.source[i] == "weak" and sel.gold[i] in mapping for i in idx])
    wrong = np.array([bool(a) and mapping[sel.gold[i]] != sel.y[i] for a, i in zip(audited, idx)])  # type: ignore[index]

    t = time.perf_counter()
    ours = find_label_issues(base, sel, seed=args.seed)
    t_ours = time.perf_counter() - t
    variants = {"ours: kern_finetune.labels.label_check.find_label_issues (5-fold OOF, per-class mean threshold)":
                {"flags": np.isin(idx, ours["indices"]), "seconds": t_ours}}

    with tempfile.TemporaryDirectory() as tmp:
        npz, res, script = Path(tmp) / "in.npz", Path(tmp) / "out.json", Path(tmp) / "cl.py"
        np.savez(npz, x=base[idx], y=y, pred_probs=ours["pred_probs"], seed=args.seed)
        script.write_text(CLEANLAB_SCRIPT)
        subprocess.run([args.cleanlab_python, str(script), str(npz), str(res)], check=True)
        cl = json.loads(res.read_text())
    for name, v in cl["variants"].items():
        variants[name] = {"flags": np.array(v["flags"], dtype=bool), "seconds": v["seconds"]}

    rows = {name: {**_scores(v["flags"], weak, audited, wrong), "seconds": round(v["seconds"], 2)}
            for name, v in variants.items()}

    # downstream: what the pipeline's default (--noise-filter drop) gets from each set of flags
    seeds = [int(x) for x in args.train_seeds.split(",") if x.strip()]
    ours_name = next(iter(variants))
    cl_name = "cleanlab filter_by=prune_by_noise_rate, our OOF probabilities"
    downstream: dict[str, dict[str, object]] = {}
    for name, flags in (("no label check", np.zeros(len(idx), dtype=bool)), (ours_name, variants[ours_name]["flags"]),
                        (cl_name, variants[cl_name]["flags"])) if seeds else ():
        dropped = without_label_issues(sel, {"indices": idx[flags & weak]})
        scores = [top_1k(_train_default_head(base, dropped, s), gold) for s in seeds]
        downstream[name] = {"dropped": int((flags & weak).sum()), "top_1k": [round(x, 2) for x in scores],
                            "mean": round(float(np.mean(scores)), 2), "std": round(float(np.std(scores)), 2)}
        print(name, downstream[name], flush=True)
    audit = {"n_labeled": int(len(idx)), "n_weak": int(weak.sum()), "n_audited": int(audited.sum()),
             "n_audited_wrong": int(wrong.sum())}
    command = " ".join([".venv/bin/python", "benchmarks/label_check.py", *(shlex.quote(a) for a in sys.argv[1:])])
    payload = {"command": command, "machine": machine(), "cleanlab": cl["version"],
               "audit": audit, "variants": rows, "downstream": {"train_seeds": seeds, "rows": downstream}}
    lines = [
        f"Command: `{command}` (cleanlab from `--cleanlab-python`, default /work/venvs/robust/bin/python)",
        "",
        f"Machine: {payload['machine']}; cleanlab {cl['version']}",
        "",
        f"Full bundled sample, default selection (seed {args.seed}): {audit['n_labeled']} labels, "
        f"{audit['n_weak']} weak; {audit['n_audited']} weak labels have a gold value, "
        f"{audit['n_audited_wrong']} of them wrong ({100 * audit['n_audited_wrong'] / audit['n_audited']:.1f}%).",
        "Precision / recall / F1 in percent of the flags on those audited weak labels (manual labels never flagged).",
        "Seconds measured under load (2 shared cores); the filter_by rows reuse our out-of-fold probabilities, so",
        "their seconds exclude the cross-validation that ours and CleanLearning include.",
        "",
        "| method | weak flagged | audited flagged | flagged & wrong | precision | recall | F1 | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['n_flagged_weak']} | {r['n_flagged_audited']} | {r['flagged_wrong']} | "
                     f"{r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {r['seconds']:.2f} |")
    if downstream:
        lines += [
            "",
            "Downstream: the default head (RunConfig() settings) trained after dropping each method's weak-label",
            f"flags, seeds {seeds}; top_1k in percent over all test queries (mean ± std).",
            "",
            "| flags dropped from | dropped | top_1k |",
            "|---|---|---|",
        ]
        for name, r in downstream.items():
            lines.append(f"| {name} | {r['dropped']} | {r['mean']:.2f} ± {r['std']:.2f} |")
    write_results("label_check", payload, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
