"""``kern-finetune demo``: the whole loop on this machine, over HTTP (the steps and the figures it reports:
docs/host.md, "kern-finetune demo")."""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..refinery.api import RefineryClient
from ..refinery.export import load_export
from ..refinery.columns import HUGGINGFACE, embedding_name
from ..refinery.gateway import Gateway
from ..refinery.model_door import ModelDoorTarget, wait_finished
from ..refinery.search import SEARCH_LIMIT
from ..labels.select import gold_to_class
from ..sync import sync_project
from .run import BASIC_TITLE, add_help_all, add_run_options, advanced, config_from_args

__all__ = ["register", "search_same_class", "SearchFigures"]

DEFAULT_EXPORT = Path("samples/ag_news/export.json.gz")
# an editable/source install can find the bundled sample from anywhere
_REPO_EXPORT = Path(__file__).resolve().parents[2] / DEFAULT_EXPORT
NEW_LABELS = 20
"""Manual labels the demo adds between the two syncs, as labelers would."""


def _sample_export(src: Path, n: int, dst: Path, seed: int) -> Path:
    """A seeded subset of ``n`` records of ``src`` (for a quick demo), written as ``.json.gz``."""
    records = load_export(src)
    if n < len(records):
        records = random.Random(seed).sample(records, n)
    with gzip.open(dst, "wt", encoding="utf-8") as fh:
        json.dump(records, fh)
    return dst


def _classes(sel: Any) -> tuple[list[str | None], str]:
    """Class per record: gold, else its training label mapped to gold when that mapping is one-to-one."""
    mapping = gold_to_class(sel)
    one_to_one = mapping is not None and len(mapping) == len(sel.classes)
    to_gold = {c: g for g, c in mapping.items()} if one_to_one and mapping is not None else {}
    out: list[str | None] = []
    for i, g in enumerate(sel.gold):
        if g is None and to_gold and sel.y[i] >= 0:
            g = to_gold[int(sel.y[i])]
        out.append(g)
    return out, ("gold, else training label mapped to gold" if one_to_one else "gold only")


@dataclass(frozen=True)
class SearchFigures:
    """What refinery's similarity search (the host's replay) returned for one embedding over the demo's queries."""

    results: float
    """Mean neighbours returned per query (the query record not counted)."""
    same_class: float
    """Mean neighbours sharing the query's class."""
    precision: float
    """Share (%) of all returned neighbours that share their query's class."""
    query_included: bool
    """Whether the host returned the query record first, as refinery's data browser does."""


def search_same_class(
    gateway: Gateway, project_id: str, embedding_id: str, queries: list[str], classes: dict[str, str | None],
    *, refinery_id: Any, id_attribute: str,
) -> SearchFigures:
    """Run refinery's data-browser search (100 records within the threshold, the query first) from every query
    (``refinery_id``: record id -> refinery's record id) and count the neighbours that share its class."""
    returned, same, included = [], [], []
    for rid in queries:
        found = [str(r["data"][id_attribute]) for r in gateway.search_similar(project_id, embedding_id, refinery_id(rid))]
        hits = [h for h in found if h != rid]
        want = classes[rid]
        returned.append(len(hits))
        same.append(sum(1 for h in hits if classes.get(h) == want))
        included.append(bool(found) and found[0] == rid)
    total = sum(returned)
    return SearchFigures(
        results=float(np.mean(returned)), same_class=float(np.mean(same)), precision=100.0 * sum(same) / total if total else 0.0, query_included=all(included),
    )


def _add_manual_labels(host: Any, run: Any, n: int) -> int:
    """Label ``n`` records that had no selected label with their gold class, as labelers do in refinery's UI
    (which has no API route: the demo writes them into its own host)."""
    sel = run.selection
    mapping = gold_to_class(sel) or {}
    rows = [i for i in sel.test_idx.tolist() if sel.gold[i] in mapping][:n]
    items = [(sel.ids[i], sel.classes[mapping[sel.gold[i]]], None) for i in rows]
    host.store.labels.set_labels(run.metrics["task"], items, source="MANUAL", user_name=host.user_name)
    return len(rows)


def _stock_embedding(gateway: Gateway, project_id: str, attribute: str, base_model: Path, models: Path,
                     target: ModelDoorTarget, say: Any) -> tuple[str, str]:
    """Refinery's stock embedding of the base model, computed by the host's embedder from a copy of the base
    model in the volume (the host never downloads): its id once FINISHED, and its name."""
    folder = models / "stock"
    shutil.copytree(base_model, folder)
    attribute_id = next(str(a["id"]) for a in gateway.attributes(project_id) if a.get("name") == attribute)
    gateway.create_embedding(project_id, attribute_id, f"{target.models_mount}/{folder.name}")
    say(f"demo: refinery's stock embedding of {attribute!r} for comparison (the base model, computed by the embedder)")
    name = embedding_name(attribute, model=f"{target.models_mount}/{folder.name}", platform=HUGGINGFACE, short=False)
    return wait_finished(gateway, project_id, name, target), name


def _export_path(args: argparse.Namespace) -> Path:
    export = Path(args.export)
    if not export.exists() and args.export == DEFAULT_EXPORT and _REPO_EXPORT.exists():
        export = _REPO_EXPORT
    if not export.exists():
        raise ConfigError(f"sample export not found: {export} (run from the repository root, or pass --export)")
    return export


def _demo(args: argparse.Namespace) -> int:
    from ..host import DEMO_PASSWORD, DEMO_USER, serve_in_thread
    from ..vectors.encode import default_model_path

    config = config_from_args(args)
    say = (lambda _m: None) if args.json else print
    export = _export_path(args)
    work = Path(tempfile.mkdtemp(prefix="kern-demo-"))
    try:
        if args.sample:
            export = _sample_export(export, args.sample, work / "export.json.gz", config.seed)
        say("demo: about a quarter of an hour on 2 CPU cores for the whole sample (--sample N for a quicker one): "
            "a local host with refinery's embedder, a cron sync through the model door that fine-tunes and judges "
            "itself, searches through the host, labelers' new labels and the next sync" if not args.sample
            else f"demo: a seeded subset of {args.sample} records (the whole sample takes about a quarter of an hour)")
        models = work / "models"
        models.mkdir()
        target = ModelDoorTarget(models, "/models", wait_s=3600, poll_s=1.0)
        say(f"demo: starting the local host with {export}; its embedder sees {models} as /models ...")
        with serve_in_thread(export, data_dir=work / "host", port=args.port, host="127.0.0.1", user_name=DEMO_USER,
                             password=DEMO_PASSWORD, models_volumes=[(models, "/models")]) as host:
            say(f"demo: host at {host.url}, project {host.project_id} (user {DEMO_USER})")
            client = RefineryClient(host.url, DEMO_USER, DEMO_PASSWORD, project_id=host.project_id, timeout=60)
            kw = dict(out_dir=args.out, state_dir=work / "sync", progress=say, door="model", model_target=target)
            first = sync_project(client, host.project_id, config, force=True, **kw)
            run = first.run
            assert run is not None and run.selection is not None and first.embedding_id is not None
            gateway = Gateway(client)
            stock_id, stock_name = _stock_embedding(gateway, host.project_id, first.attribute,
                                        Path(config.base_model or default_model_path()), models, target, say)
            sel = run.selection
            cls, how = _classes(sel)
            classes = dict(zip(sel.ids, cls))
            test_ids = [sel.ids[i] for i in sel.test_idx.tolist()]
            queries = random.Random(config.seed).sample(test_ids, min(args.queries, len(test_ids)))
            say(f"demo: {len(queries)} seeded test records through the host's similarity search ...")
            search = dict(refinery_id=host.store.project.record_uuid, id_attribute=config.id_attribute)
            raw_s = search_same_class(gateway, host.project_id, stock_id, queries, classes, **search)
            ft_s = search_same_class(gateway, host.project_id, first.embedding_id, queries, classes, **search)
            door_lines = [f"model door, first sync: {first.status} {first.embedding!r}"]
            if not args.no_resync:
                added = _add_manual_labels(host, run, NEW_LABELS)
                say(f"demo: labelers add {added} manual labels; the next cron sync picks them up")
                second = sync_project(client, host.project_id, config, **kw)
                states = {e["name"]: e["state"] for e in gateway.embeddings(host.project_id)}
                door_lines += [
                    f"model door, after {added} new labels: {second.status} {second.embedding!r} ({second.message})",
                    f"model folders in the embedder's volume: {', '.join(sorted(p.name for p in models.iterdir()))}; "
                    "embeddings in the host: " + ", ".join(f"{name} {state}" for name, state in states.items())]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    if args.json:
        print(json.dumps(_json_line(run.metrics, raw_s, ft_s, len(queries), str(first.embedding), stock_name,
                                    len(run.ids))))
        return 0
    _print_outcome(run.metrics, raw_s, ft_s, len(queries), how)
    from ..console import say_next

    for door_line in door_lines:
        print(door_line)
    print(f"outputs in {args.out}; the demo's host is gone")
    say_next(print, args.out, "demo")
    return 0


def _json_line(metrics: dict[str, Any], raw_s: SearchFigures, ft_s: SearchFigures, n_queries: int, embedding: str,
               raw_embedding: str, n_records: int) -> dict[str, Any]:
    """``--json``'s headline numbers."""
    top = metrics.get("top_k", {})
    verdict = metrics.get("verdict") or {}
    line = {"top_1k_raw": top.get("raw", {}).get("1000"), "top_1k_finetuned": top.get("finetuned", {}).get("1000"),
            "top_k": top}
    for figure in ("results", "same_class", "precision"):
        line[f"search_{figure}_raw"] = getattr(raw_s, figure)
        line[f"search_{figure}_finetuned"] = getattr(ft_s, figure)
    return line | {
        "search_query_included": raw_s.query_included and ft_s.query_included,
        "search_queries": n_queries,
        "search_limit": SEARCH_LIMIT,
        "verdict": verdict.get("verdict"),
        "verdict_same_class": (verdict.get("new") or {}).get("same_class"),
        "verdict_first_screen_same": (verdict.get("new") or {}).get("first_screen_same"),
        "embedding": embedding,
        "raw_embedding": raw_embedding,
        "n_records": n_records,
    }


DESCRIPTION = """\
The whole loop on this machine, over HTTP: start a local refinery-compatible host with the bundled AG News
sample and a models volume for its embedder, sync through the model door as a cron job would (pull,
fine-tune, hand the folder to the embedder, which computes the embedding), compare what refinery's
similarity search returns with its stock embedding and ours, then add labels and sync again."""

EPILOG = """\
examples:
  kern-finetune demo                      # all 20,000 records
  kern-finetune demo --sample 2000        # a seeded subset of 2,000 records, quicker

--help-all lists every option."""


def _print_outcome(metrics: dict[str, Any], raw_s: SearchFigures, ft_s: SearchFigures, n_queries: int, how: str) -> None:
    """The verdict first (no gold needed), then what gold says on the test records (the benchmark's judge)."""
    top = metrics.get("top_k", {})
    print()
    _print_verdict(metrics.get("verdict") or {})
    print(f"{'gold: test records, same class among k nearest':<44}{'raw':>10}{'fine-tuned':>12}")
    for k in sorted(top.get("raw", {}), key=int):
        print(f"{'top_' + k:<44}{top['raw'][k]:>9.2f}%{top['finetuned'][k]:>11.2f}%")
    print(f"{'chance':<44}{metrics.get('chance', float('nan')):>9.2f}%")
    print(f"{'host search (refinery computes both)':<44}{'stock':>10}{'model door':>12}")
    print(f"{'  neighbours returned':<44}{raw_s.results:>10.1f}{ft_s.results:>12.1f}")
    print(f"{'  of them same class':<44}{raw_s.same_class:>10.1f}{ft_s.same_class:>12.1f}")
    print(f"{'  share same class':<44}{raw_s.precision:>9.2f}%{ft_s.precision:>11.2f}%")
    print(f"  over {n_queries} test records (query record not counted; at most {SEARCH_LIMIT} per search"
          f"{', within the threshold' if ft_s.query_included else ''}); class = {how}")


def _print_verdict(verdict: dict[str, Any]) -> None:
    """The headline: the verdict's figures (held-out labels as judges, searched as refinery searches)."""
    if "new" not in verdict:
        print(f"verdict: {verdict.get('conclusion', 'none')}")
        return
    print(f"verdict (no gold needed): {verdict['verdict'].upper()}")
    print(f"{'refinery search, judged by held-out labels':<44}{'raw':>10}{'fine-tuned':>12}")
    print(f"{'  same class over a session':<44}{verdict['raw']['same_class']:>9.1f}%{verdict['new']['same_class']:>11.1f}%")
    print(f"{'  first screen: same class of 9':<44}{verdict['raw']['first_screen_same']:>10.1f}"
          f"{verdict['new']['first_screen_same']:>12.1f}")
    print(f"{'  searches with < 10 results':<44}{verdict['raw']['lt_10']:>9.1f}%{verdict['new']['lt_10']:>11.1f}%")
    print(f"  over {verdict['n_queries']} searches, {verdict['judged_per_query']:.1f} judged records each; gold below")
    print()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="local host + bundled AG News sample: a sync through the model door, then refinery's search",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [--sample N] [--out DIR] [options]",
    )
    add_help_all(p)
    g = p.add_argument_group(BASIC_TITLE)
    g.add_argument("--sample", type=int, default=0, metavar="N", help="use a seeded subset of N records (default: all)")
    g.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR",
                   help="output folder of the run (default: %(default)s)")
    add_run_options(p, g, basic_names=frozenset({"mode", "device"}))  # the sample sets task, texts and gold
    g = p.add_argument_group("the demo")
    advanced(g.add_argument("--export", type=Path, default=DEFAULT_EXPORT,
                            help="export the host serves (default: %(default)s)"))
    advanced(g.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"))
    advanced(g.add_argument("--queries", type=int, default=50,
                            help="test records to search with (default: %(default)s)"))
    advanced(g.add_argument("--json", action="store_true", help="end with one JSON line of the headline numbers"))
    advanced(g.add_argument("--no-resync", action="store_true",
                            help="stop after the first sync (no new labels, no second sync)"))
    p.set_defaults(func=_demo, gold_attribute="Class Index")
