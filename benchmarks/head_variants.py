"""Can the head's default give a better first screen without losing top_100 / top_1k or starving the search?

Issue 15, research. Head variants over the cached base vectors of every project in ``_common.PROJECTS``,
each **chosen on validation records only**; test figures are printed next to them for the report, and
never feed the choice.

Variants (all: supcon t=0.5, batch 256, Adam 1e-3, early stopping on validation loss, the label check):

- ``default``: the product's head (:func:`kern_finetune.training.train.fit_head`, ``RunConfig()``);
- ``low-rank r``: ``x + B(A x)`` with ``A`` r x 384 and ``B`` 384 x r (``B`` starts at 0): a head of low
  capacity, so the labeled and the unlabeled records move alike;
- ``noise s``: Gaussian noise of std ``s`` per dimension added to the (unit-length) base vectors of each
  training batch, re-normalised: the head cannot fit the labeled points exactly;
- ``mixup``: each training row is mixed with a random row of the same batch (any label),
  ``lam * x + (1 - lam) * x'`` with ``lam ~ U(0.7, 1)``; the loss sees the first row's label;
- ``epochs e``: at most e epochs;
- ``pseudo 0.9``: the product's head trained with the logistic-regression pseudo-labels full mode uses
  (``RunConfig(pseudo_labels="0.9")``, :mod:`kern_finetune.labels.pseudo`): unlabeled records join training;
- each trained head also at a raw/tuned blend chosen per project on validation (``val blend``, below).

Validation figures (no gold; the selection's validation rows are never trained on):

- ``v10`` / ``v100`` / ``v1k``: top_k of the validation records among the validation records, judged on
  their labels (manual or weak above the threshold), as test top_k is test among test (k clipped to n-1;
  v1k only where a project has more than 2,000 validation records);
- ``vlt10`` / ``vlt100``: refinery's threshold search (:func:`kern_finetune.refinery.search.threshold_search`)
  from 300 seeded **unlabeled** queries among all records (label-free), seed + 1000 so they are not the
  test figures' queries.

``val blend``: the blend in {0, 0.2, 0.4, 0.6} with the best v10 among those whose v100 (and v1k) stay
within 0.5 of the blend 0 head's and whose vlt10 / vlt100 stay within 2 / 10 points of raw's.

The winning rule, fixed before running: a variant wins when on every project its validation v10 beats
the default head's while its v100 and v1k are no more than 0.5 below the default's and its search shares
are within raw + 2 (vlt10) and raw + 10 (vlt100) points.

    python benchmarks/head_variants.py                      # every project, seed 42
    python benchmarks/head_variants.py --projects rotten_tomatoes --variants default,noise0.02 --seeds 42,43

Writes ``benchmarks/results/head_variants.{json,md}`` (merged by project, variant, seed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _common import PROJECTS, RESULTS, label_checked, load_project, machine, score_row

from kern_finetune.config import RunConfig
from kern_finetune.evaluation.evaluate import neighbour_purity
from kern_finetune.refinery.search import threshold_search
from kern_finetune.training.losses import make_loss
from kern_finetune.labels.pseudo import find_pseudo_labels, with_pseudo_labels
from kern_finetune.labels.select import Selection
from kern_finetune.training.samplers import class_aware_batches
from kern_finetune.training.train import fit_head

BLENDS = (0.0, 0.2, 0.4, 0.6)
VARIANTS = ("default", "low-rank16", "low-rank64", "noise0.01", "noise0.02", "mixup", "epochs3", "pseudo0.9")


class LowRankHead(nn.Module):
    """``x + B(A x)``, blended with the input like :class:`kern_finetune.training.heads.SkipConnectionHead`."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.raw_weight = 0.0

    def set_raw_weight(self, value: float) -> None:
        self.raw_weight = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.up(self.down(x))
        return out if self.raw_weight == 0.0 else self.raw_weight * x + (1.0 - self.raw_weight) * out


def train_variant(head: nn.Module, sel: Selection, base: np.ndarray, *, seed: int, epochs: int = 30, noise: float = 0.0,
                  mixup: bool = False, patience: int = 3, batch_size: int = 256, lr: float = 1e-3) -> nn.Module:
    """The native trainer's loop (:class:`kern_finetune.training.train.HeadTrainer`, supcon t=0.5) with one change."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(np.ascontiguousarray(base[sel.train_idx], dtype=np.float32))
    yt = torch.from_numpy(sel.y[sel.train_idx].astype(np.int64))
    xv = torch.from_numpy(np.ascontiguousarray(base[sel.val_idx], dtype=np.float32))
    yv = torch.from_numpy(sel.y[sel.val_idx].astype(np.int64))
    n_classes = int(max(yt.max(), yv.max())) + 1
    loss_fn = make_loss("supcon")  # t=0.5
    opt = torch.optim.Adam([*head.parameters(), *loss_fn.parameters()], lr=lr)
    val_batches = class_aware_batches(sel.y[sel.val_idx], batch_size, np.random.default_rng(seed + 1))
    best = (float("inf"), -1, copy.deepcopy(head.state_dict()))
    for epoch in range(epochs):
        head.train()
        for idx in class_aware_batches(sel.y[sel.train_idx], batch_size, rng):
            b = torch.from_numpy(idx)
            xb, yb = xt[b], yt[b]
            if noise > 0:
                xb = F.normalize(xb + noise * torch.randn_like(xb), dim=1)
            if mixup:
                lam = torch.empty(len(xb), 1).uniform_(0.7, 1.0)
                xb = lam * xb + (1 - lam) * xb[torch.randperm(len(xb))]
            loss = loss_fn(head(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            val = float(np.mean([float(loss_fn(head(xv[torch.from_numpy(i)]), yv[torch.from_numpy(i)])) for i in val_batches]))
        if val < best[0] - 1e-5:
            best = (val, epoch, copy.deepcopy(head.state_dict()))
        elif epoch - best[1] >= patience:
            break
    head.load_state_dict(best[2])
    head.eval()
    return head


def fit(variant: str, sel: Selection, base: np.ndarray, seed: int) -> nn.Module:
    dim = base.shape[1]
    if variant == "default":
        return fit_head(base, sel, RunConfig(seed=seed), progress=False).head_
    if variant.startswith("pseudo"):
        found = find_pseudo_labels(base, sel, threshold=float(variant[len("pseudo"):]), seed=seed)
        return fit_head(base, with_pseudo_labels(sel, found), RunConfig(seed=seed), progress=False).head_
    if variant.startswith("low-rank"):
        return train_variant(LowRankHead(dim, int(variant[len("low-rank"):])), sel, base, seed=seed)
    from kern_finetune.training.heads import SkipConnectionHead

    head = SkipConnectionHead(dim)
    if variant.startswith("noise"):
        return train_variant(head, sel, base, seed=seed, noise=float(variant[len("noise"):]))
    if variant == "mixup":
        return train_variant(head, sel, base, seed=seed, mixup=True)
    if variant.startswith("epochs"):
        return train_variant(head, sel, base, seed=seed, epochs=int(variant[len("epochs"):]))
    raise ValueError(f"unknown variant {variant!r}")


def embed(head: nn.Module, base: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return F.normalize(head(torch.from_numpy(np.ascontiguousarray(base, dtype=np.float32))), dim=1).numpy()


def validation_row(x: np.ndarray, sel: Selection, seed: int) -> dict[str, float]:
    """Validation figures (module docstring): labels of the validation rows, label-free search counts."""
    v = sel.val_idx
    ks = (10, 100, 1000) if len(v) > 2000 else (10, 100)
    per = neighbour_purity(x[v], sel.y[v], ks=ks)
    row = {f"v{k if k < 1000 else '1k'}": float(100 * p.mean()) for k, p in per.items()}
    unlabeled = np.flatnonzero(sel.y < 0)
    queries = np.random.default_rng(seed + 1000).choice(unlabeled, size=min(300, len(unlabeled)), replace=False)
    ts = threshold_search(x, queries, np.full(len(x), -1), seed=seed + 1000)
    row.update(vlt10=ts["lt_10"], vlt100=ts["lt_100"])
    return row


def choose_blend(rows: dict[float, dict[str, float]], raw: dict[str, float]) -> float:
    """The ``val blend`` rule of the module docstring."""
    head = rows[0.0]
    ok = [a for a, r in rows.items()
          if r["v100"] >= head["v100"] - 0.5 and r.get("v1k", 0) >= head.get("v1k", 0) - 0.5
          and r["vlt10"] <= raw["vlt10"] + 2 and r["vlt100"] <= raw["vlt100"] + 10]
    return max(ok, key=lambda a: rows[a]["v10"]) if ok else 0.0


def markdown(results: list[dict[str, Any]], command: str) -> str:
    keys = ("v10", "v100", "v1k", "vlt10", "vlt100", "top_10", "top_100", "top_1000", "lt_10", "lt_100", "same_class")
    lines = [f"Command: `{command}`", "", f"Machine: {machine()} (timings measured under load)", "",
             "Validation columns (v10/v100/v1k: validation records among validation records, judged on their labels; "
             "vlt10/vlt100: % of 300 unlabeled queries with < 10 / < 100 results in refinery's threshold search) "
             "are what the choice reads. Test columns (gold) are for the report only.", ""]
    for project in dict.fromkeys(r["project"] for r in results):
        lines += [f"### {project}", "", "| variant | blend | seeds | raw weight | " + " | ".join(keys) + " | train s |",
                  "|---|---|---|---|" + "---|" * (len(keys) + 1)]
        rs = [r for r in results if r["project"] == project]
        for name, blend in dict.fromkeys((r["variant"], r["blend"]) for r in rs):
            group = [r for r in rs if r["variant"] == name and r["blend"] == blend]
            cells = []
            for k in ("raw_weight", *keys, "train_seconds"):
                vals = [r[k] for r in group if r.get(k) is not None]
                cells.append(f"{np.mean(vals):.2f}" if vals else "-")
            lines.append(f"| {name} | {blend} | {len(group)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", default=",".join(PROJECTS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--name", default="head_variants")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    path = RESULTS / f"{args.name}.json"
    old = json.loads(path.read_text())["runs"] if path.exists() else []
    results: list[dict[str, Any]] = []
    for project in args.projects.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            sel, base, classes = load_project(project, seed)
            checked = label_checked(sel, base, seed)
            raw = {**validation_row(base, sel, seed), **score_row(base, sel, classes, seed)}
            results.append({"project": project, "variant": "raw", "blend": "-", "raw_weight": 1.0, "seed": seed, **raw})
            for variant in args.variants.split(","):
                t = time.perf_counter()
                head = fit(variant, checked, base, seed)
                seconds = time.perf_counter() - t
                per_blend = {}
                for a in BLENDS:
                    head.set_raw_weight(a)
                    per_blend[a] = validation_row(embed(head, base), sel, seed)
                chosen = choose_blend(per_blend, raw)
                tests: dict[float, dict[str, float]] = {}
                for blend, label in ((0.0, "0"), (chosen, "val")):
                    head.set_raw_weight(blend)
                    if blend not in tests:
                        tests[blend] = score_row(embed(head, base), sel, classes, seed)
                    row = {"project": project, "variant": variant, "blend": label, "raw_weight": blend, "seed": seed,
                           "train_seconds": round(seconds, 1), **per_blend[blend], **tests[blend]}
                    results.append(row)
                    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
                done = {(r["project"], r["variant"], r["blend"], r["seed"]) for r in results}
                merged = [r for r in old if (r["project"], r["variant"], r["blend"], r["seed"]) not in done] + results
                command = ("python benchmarks/head_variants.py " + " ".join(sys.argv[1:])).strip()
                md = markdown(merged, "; ".join(dict.fromkeys([*(json.loads(path.read_text()).get("commands", []) if path.exists() else []), command])))
                RESULTS.mkdir(parents=True, exist_ok=True)
                commands = list(dict.fromkeys([*(json.loads(path.read_text()).get("commands", []) if path.exists() else []), command]))
                path.write_text(json.dumps({"commands": commands, "runs": merged}, indent=1))
                (RESULTS / f"{args.name}.md").write_text(md)


if __name__ == "__main__":
    main()
