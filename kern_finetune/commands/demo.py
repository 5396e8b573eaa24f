"""``kern-finetune demo``: the whole loop on this machine, over HTTP.

1. start the local refinery-compatible host on 127.0.0.1 with the bundled AG News sample export;
2. ``sync`` against it: pull the export, fine-tune from the manual + confident weak labels, push the
   fine-tuned embedding;
3. push the raw base vectors too (as ``<attribute>-classification-<base model>``), so the host can
   search with both;
4. print the before/after table (top-k same-class neighbours on the test records, judged by the gold
   attribute) and, for seeded test records, how many of the host's 100 similarity-search results
   share the record's class with the raw vs the fine-tuned embedding.

A neighbour's class is its gold value; for training records without one, it is the label the record
was trained on, translated to the gold value that most labeled records with gold carry (when that
translation is one-to-one). ``*_gold_only`` counts only neighbours whose gold is known.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..client import RefineryClient
from ..errors import ConfigError
from ..export import load_export
from ..sync import sync_project
from .run import add_run_options, config_from_args

__all__ = ["register", "search_same_class"]

DEFAULT_EXPORT = Path("samples/ag_news/export.json.gz")
# an editable/source install can find the bundled sample from anywhere
_REPO_EXPORT = Path(__file__).resolve().parents[2] / DEFAULT_EXPORT
SEARCH_LIMIT = 100


def _sample_export(src: Path, n: int, dst: Path, seed: int) -> Path:
    """A seeded subset of ``n`` records of ``src`` (for a quick demo), written as ``.json.gz``."""
    records = load_export(src)
    if n < len(records):
        records = random.Random(seed).sample(records, n)
    with gzip.open(dst, "wt", encoding="utf-8") as fh:
        json.dump(records, fh)
    return dst


def _classes(sel: Any) -> tuple[list[str | None], str]:
    """Class per record: gold, else its training label mapped to gold by majority (see module doc)."""
    votes: dict[int, Counter[str]] = {}
    for i in sel.labeled_idx.tolist():
        if sel.gold[i] is not None:
            votes.setdefault(int(sel.y[i]), Counter())[sel.gold[i]] += 1
    mapping = {k: c.most_common(1)[0][0] for k, c in votes.items()}
    one_to_one = len(set(mapping.values())) == len(mapping) == len(sel.classes)
    out: list[str | None] = []
    for i, g in enumerate(sel.gold):
        if g is None and one_to_one and sel.y[i] >= 0:
            g = mapping[int(sel.y[i])]
        out.append(g)
    return out, ("gold, else training label mapped to gold" if one_to_one else "gold only")


def search_same_class(
    client: RefineryClient, project_id: str, embedding: str, queries: list[str], classes: dict[str, str | None],
    gold_known: set[str], *, limit: int = SEARCH_LIMIT,
) -> tuple[float, float]:
    """Mean number of the host's ``limit`` results sharing the query's class: (with mapping, gold only)."""
    same, same_gold = [], []
    for rid in queries:
        hits = client.similarity(embedding, rid, limit=limit, project_id=project_id)
        want = classes[rid]
        same.append(sum(1 for h in hits if classes.get(h) == want))
        same_gold.append(sum(1 for h in hits if classes.get(h) == want and h in gold_known))
    return float(np.mean(same)), float(np.mean(same_gold))


def _demo(args: argparse.Namespace) -> int:
    from ..host import DEMO_PASSWORD, DEMO_USER, serve_in_thread

    config = config_from_args(args)
    say = (lambda _m: None) if args.json else print
    export = Path(args.export)
    if not export.exists() and args.export == DEFAULT_EXPORT and _REPO_EXPORT.exists():
        export = _REPO_EXPORT
    if not export.exists():
        raise ConfigError(f"sample export not found: {export} (run from the repository root, or pass --export)")
    work = Path(tempfile.mkdtemp(prefix="kern-demo-"))
    try:
        if args.sample:
            export = _sample_export(export, args.sample, work / "export.json.gz", config.seed)
        say(f"demo: starting the local host with {export} ...")
        with serve_in_thread(export, data_dir=work / "host", port=args.port, host="127.0.0.1",
                             user_name=DEMO_USER, password=DEMO_PASSWORD) as host:
            say(f"demo: host at {host.url}, project {host.project_id} (user {DEMO_USER})")
            client = RefineryClient(host.url, DEMO_USER, DEMO_PASSWORD, project_id=host.project_id, timeout=60)
            result = sync_project(client, host.project_id, config, out_dir=args.out, force=True,
                                  state_dir=work / "sync", progress=say, tensor_format="b64")
            run = result.run
            assert run is not None and result.push is not None
            raw = run.extra.get("raw_vectors")
            if raw is None:
                raise ConfigError("the pipeline returned no raw vectors (RunResult.extra['raw_vectors'])")
            attr = result.push.name.split("-classification-", 1)[0]
            raw_name = f"{attr}-classification-{run.extra.get('base_model_name') or 'all-MiniLM-L6-v2'}"
            say(f"demo: pushing the raw base vectors as {raw_name!r} for comparison")
            client.push_embedding(host.project_id, raw_name, run.ids, raw, attribute=attr,
                                  model=str(run.extra.get("base_model_name") or "all-MiniLM-L6-v2"), progress=None,
                                  tensor_format="b64")

            sel = run.extra["selection"]
            cls, how = _classes(sel)
            classes = dict(zip(sel.ids, cls))
            gold_known = {i for i, g in zip(sel.ids, sel.gold) if g is not None}
            test_ids = [sel.ids[i] for i in sel.test_idx.tolist()]
            queries = random.Random(config.seed).sample(test_ids, min(args.queries, len(test_ids)))
            say(f"demo: {len(queries)} seeded test records, {SEARCH_LIMIT} host search results each ...")
            raw_same, raw_gold = search_same_class(client, host.project_id, raw_name, queries, classes, gold_known)
            ft_same, ft_gold = search_same_class(client, host.project_id, result.push.name, queries, classes, gold_known)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    top = run.metrics.get("top_k", {})
    if not args.json:
        print()
        print(f"{'test records, same class among k nearest':<44}{'raw':>10}{'fine-tuned':>12}")
        for k in sorted(top.get("raw", {}), key=int):
            print(f"{'top_' + k:<44}{top['raw'][k]:>9.2f}%{top['finetuned'][k]:>11.2f}%")
        print(f"{'chance':<44}{run.metrics.get('chance', float('nan')):>9.2f}%")
        print(f"{f'host search: same class among {SEARCH_LIMIT} results':<44}{raw_same:>10.1f}{ft_same:>12.1f}")
        print(f"{'  (neighbours with known gold only)':<44}{raw_gold:>10.1f}{ft_gold:>12.1f}")
        print(f"  over {len(queries)} test records; class = {how}")
        print(f"pushed {result.push.name!r} and {raw_name!r}; outputs in {args.out}")
    line = {
        "top_1k_raw": top.get("raw", {}).get("1000"),
        "top_1k_finetuned": top.get("finetuned", {}).get("1000"),
        "search_same_class_raw": raw_same,
        "search_same_class_finetuned": ft_same,
        "search_same_class_gold_only_raw": raw_gold,
        "search_same_class_gold_only_finetuned": ft_gold,
        "search_queries": len(queries),
        "search_limit": SEARCH_LIMIT,
        "embedding": result.push.name,
        "raw_embedding": raw_name,
        "n_records": len(run.ids),
    }
    if args.json:
        print(json.dumps(line))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="local host + bundled AG News sample: sync over HTTP and compare search results",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--export", type=Path, default=DEFAULT_EXPORT, help="export the host serves (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--sample", type=int, default=0, metavar="N", help="use a seeded subset of N records (default: all)")
    p.add_argument("--queries", type=int, default=50, help="test records to search with (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder of the run (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers")
    add_run_options(p)
    p.set_defaults(func=_demo, gold_attribute="Class Index")
