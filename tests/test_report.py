"""report.html: the first screen, per-class top_k, like-with-like 2D views; safe for any user string; one file."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.evaluation.report import N_NEIGHBOURS, ReportData, first_screen, per_class_top_k, write_report

NASTY = r"$\notacmd$"
SCRIPTY = "<script>alert(1)</script>"
URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}[^\s"'<>]*""", re.I)


def _external_refs(page: str, texts: list[str] = ()) -> list[str]:
    """src=/href= that do not point inside the page, <link>, @import, url(), and any URL that is not part of a
    record's own text (a news text may quote a web address: that is data, not a resource)."""
    refs = [m for m in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page) if not m.startswith(("data:", "#"))]
    data = "\n".join(texts)
    urls = [u for u in URL.findall(page) if html.unescape(u).rstrip(".,;)\u2026") not in data]
    return refs + re.findall(r"<link\b", page) + re.findall(r"@import|url\(", page) + urls


def _tiny_data(n: int = 120, seed: int = 0) -> ReportData:
    """Three classes in 8 dimensions; the tuned vectors are better separated than the raw ones."""
    rng = np.random.default_rng(seed)
    names = [NASTY, SCRIPTY, "Sports & more"]
    cls = np.arange(n) % 3
    centres = rng.normal(size=(3, 8))
    raw = centres[cls] * 0.5 + rng.normal(size=(n, 8))
    tuned = centres[cls] * 3.0 + rng.normal(size=(n, 8))
    train = np.arange(0, n, 2)
    test = np.arange(1, n, 2)
    labels = [names[c] if i % 2 == 0 else None for i, c in enumerate(cls)]
    gold = [names[c] if i % 2 == 1 else None for i, c in enumerate(cls)]
    return ReportData(
        ids=[f"r{i}" for i in range(n)], texts=[f"text {i} {names[c]} </script><!--" for i, c in enumerate(cls)],
        labels=labels, gold=gold, gold_class=list(gold), train_idx=train, test_idx=test,
        raw=raw.astype(np.float32), tuned=tuned.astype(np.float32), seed=3,
    )


def _metrics() -> dict:
    return {
        "task": NASTY, "n_train": 45, "n_val": 15, "n_test": 60, "chance": 33.3,
        "top_k": {"raw": {"5": 50.0, "10": 45.0}, "finetuned": {"5": 90.0, "10": 88.0}},
        "classification": {},
        "skipped": {NASTY: 1}, "train_class_counts": {NASTY: 15, SCRIPTY: 15, "Sports & more": 15},
        "config": {"loss": "supcon", "engine": "native", "mode": "head"}, "seconds": {"total": 1.0},
    }


def test_first_screen_is_seeded_and_counts_matches() -> None:
    data = _tiny_data()
    screen = first_screen(data)
    assert screen == first_screen(data)  # seeded
    assert len(screen) == 5 and all(q["index"] in set(data.test_idx.tolist()) for q in screen)
    for q in screen:
        for name in ("raw", "finetuned"):
            nbs = q["neighbours"][name]
            assert len(nbs) == N_NEIGHBOURS and q["index"] not in {nb["index"] for nb in nbs}
            sims = [nb["similarity"] for nb in nbs]
            assert sims == sorted(sims, reverse=True)
            for nb in nbs:
                assert nb["match"] == (data.class_of(nb["index"]) == q["class"])
    # the tuned space is the better separated one: more same-class neighbours on the first screen
    hits = {name: sum(nb["match"] for q in screen for nb in q["neighbours"][name]) for name in ("raw", "finetuned")}
    assert hits["finetuned"] > hits["raw"]


def test_first_screen_is_cut_where_refinerys_search_cuts() -> None:
    """Each query's list says how many records refinery's threshold search returns, and which of the ten
    nearest lie beyond it; the count agrees with refinery.search.threshold_search on the same vectors (issue 15)."""
    from kern_finetune.refinery.search import SEARCH_LIMIT, threshold_search

    data = _tiny_data()
    screen = first_screen(data)
    unknown = np.full(len(data.ids), -1)
    cut = 0
    for q in screen:
        for name, x in (("raw", data.raw), ("finetuned", data.tuned)):
            unit = x / np.linalg.norm(x, axis=1, keepdims=True)
            found = threshold_search(unit, np.array([q["index"]]), unknown, seed=data.seed)
            assert q["results"][name] == found["median_results"] <= SEARCH_LIMIT
            flags = [nb["returned"] for nb in q["neighbours"][name]]
            assert flags == [rank < q["results"][name] - 1 for rank in range(len(flags))]
            cut += flags.count(False)
    assert cut > 0  # three tight classes of 40: the 5th-percentile distance leaves some lists short


def test_search_section_shows_refinerys_figures(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    search = {"raw": {"lt_10": 0.5, "lt_100": 2.25, "median_results": 100.0, "same_class": 68.9,
                      "first_screen_same": 7.14, "threshold": 1.236, "n_queries": 300},
              "finetuned": {"lt_10": 2.0, "lt_100": 5.1, "median_results": 100.0, "same_class": float("nan"),
                            "first_screen_same": 7.15, "threshold": 0.372, "n_queries": 300}}
    metrics = {**_metrics(), "threshold_search": search, "spread": {"strength": 1.25, "chosen": True}}
    write_report(path, metrics, data=None)
    page = path.read_text(encoding="utf-8")
    section = page.split("Search as refinery runs it (300 seeded test queries among all records)", 1)[1].split("<h2>", 1)[0]
    assert "<td>0.5%</td><td>2.0%</td>" in section and "<td>68.9%</td><td>-</td>" in section  # NaN: no figure
    assert "<td>1.236</td><td>0.372</td>" in section and "strength 1.25 (chosen without labels)" in section
    assert "Model door" not in section  # no model_door block: no line about it
    for door, line in (({"share": 1.5, "chosen": True}, "the head beside a base share of 1.5 (chosen on the searches"),
                       ({"share": None, "gives_stock": True, "chosen": True},
                        "the folder gives refinery's stock embedding")):
        write_report(path, {**metrics, "model_door": door}, data=None)
        assert line in path.read_text(encoding="utf-8")
    write_report(path, _metrics(), data=None)
    assert "Search as refinery runs it" not in path.read_text(encoding="utf-8")


def test_per_class_top_k_matches_the_overall_mean() -> None:
    from kern_finetune.evaluation.evaluate import top_k_purity

    data = _tiny_data()
    rows = per_class_top_k(data)
    assert {r["gold"] for r in rows} == {NASTY, SCRIPTY, "Sports & more"}
    assert sum(r["n"] for r in rows) == len(data.test_idx)
    values = sorted({data.gold[i] for i in data.test_idx})
    classes = np.array([values.index(data.gold[i]) for i in data.test_idx])
    overall = top_k_purity(data.tuned[data.test_idx], classes, (10,))["10"]
    weighted = sum(r["finetuned_10"] * r["n"] for r in rows) / len(data.test_idx)
    assert weighted == pytest.approx(overall)


def test_per_class_top_k_reuses_the_evaluations_purity() -> None:
    """The per-class table takes the evaluation's per-query purity (same queries) instead of searching again."""
    from kern_finetune.evaluation.evaluate import neighbour_purity

    data = _tiny_data()
    values = sorted({data.gold[i] for i in data.test_idx})
    classes = np.array([values.index(data.gold[i]) for i in data.test_idx])
    given = {name: neighbour_purity(x[data.test_idx], classes) for name, x in (("raw", data.raw), ("finetuned", data.tuned))}
    assert per_class_top_k(data, given=given) == per_class_top_k(data)
    marked = {name: {k: np.zeros_like(v) for k, v in per.items()} for name, per in given.items()}
    assert all(r["finetuned_10"] == 0.0 for r in per_class_top_k(data, given=marked))  # used as given
    wrong = {name: {k: v[:5] for k, v in per.items()} for name, per in given.items()}  # other queries: ignored
    assert per_class_top_k(data, given=wrong) == per_class_top_k(data)


def test_user_strings_are_escaped_and_never_mathtext(tmp_path: Path) -> None:
    """Labels and gold like "$\\notacmd$" or "<script>" neither crash a plot nor inject markup (issue 16, 3)."""
    path = tmp_path / "report.html"
    data = _tiny_data()
    write_report(path, _metrics(), plots={"per_query": {NASTY: np.linspace(0, 1, 60), "finetuned": np.ones(60)}}, data=data)
    page = path.read_text(encoding="utf-8")
    assert SCRIPTY not in page and html.escape(SCRIPTY) in page
    assert NASTY in page  # "$" and "\" are plain text in HTML
    assert page.count("<script") == 2  # the hover data and the hover code, nothing from the data
    assert "</script><!--" not in page.split("<script", 1)[0]
    hover = json.loads(re.search(r'<script type="application/json" id="hover-data">(.*?)</script>', page, re.S).group(1))
    assert len(hover) == len(data.test_idx) and all(SCRIPTY in v["t"] or NASTY in v["t"] or "Sports" in v["t"]
                                                     for v in hover.values())
    assert page.count("data:image/png;base64,") == 2
    assert not _external_refs(page)


def test_report_without_data_or_gold_still_writes(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    metrics = {"n_train": 3, "n_val": 1, "n_test": 0, "chance": None, "top_k": {"raw": {}, "finetuned": {}},
               "classification": {}, "evaluation_note": NASTY}
    write_report(path, metrics, plots=None, data=None)
    assert "No evaluation" in path.read_text(encoding="utf-8")
    data = _tiny_data()
    data = ReportData(ids=data.ids, texts=data.texts, labels=data.labels, gold=[None] * len(data.ids),
                      gold_class=[None] * len(data.ids), train_idx=data.train_idx, test_idx=np.zeros(0, dtype=int),
                      raw=data.raw, tuned=data.tuned)
    write_report(path, metrics, plots=None, data=data)  # queries from unlabeled records, matches unknown
    page = path.read_text(encoding="utf-8")
    assert "Example 1" in page and "2D views need test records with gold" in page and "No 2D views" not in page


@pytest.fixture(scope="module")
def nasty_run(subset_records, shared_cache, tmp_path_factory) -> tuple[Path, list[dict]]:
    """The 1,000-record subset with one class and its gold value renamed to "$\\notacmd$", through run_pipeline."""
    from kern_finetune.config import RunConfig
    from kern_finetune.pipeline import run_pipeline

    records = []
    for r in subset_records:
        r = dict(r)
        for col in ("__Topic__MANUAL", "__Topic__WEAK_SUPERVISION"):
            if r.get(col) == "World":
                r[col] = NASTY
        if r.get("Class Index") == "1":
            r["Class Index"] = NASTY
        records.append(r)
    out = tmp_path_factory.mktemp("nasty")
    config = RunConfig(task="Topic", gold_attribute="Class Index", mode="head", epochs=3, cache_dir=shared_cache)
    run_pipeline(records, config, out_dir=out)
    return out, records


def test_report_on_the_subset_shows_the_first_screen(nasty_run) -> None:
    out, records = nasty_run
    assert (out / "metrics.json").exists()  # the report no longer crashes before metrics are written
    page = (out / "report.html").read_text(encoding="utf-8")
    data_texts = {r["running_id"]: f"{r['Title']}. {r['Description']}" for r in records}
    # the queries' texts, by the record id each query block names
    ids = re.findall(r"<h3>Example \d+: record ([^<]+)</h3>", page)
    assert len(ids) == 5
    for rid in ids:
        text = data_texts[html.unescape(rid)]
        assert html.escape(text[:80], quote=True) in page
    # raw and fine-tuned neighbour columns with match marks, and what refinery's search returns
    assert page.count('<table class="nn">') == 5 and "\u2713" in page
    assert page.count("Refinery's search returns") == 5 and "Search as refinery runs it" in page
    # per-class table: one row per gold value, the renamed one included
    per_class = page.split("top_k per class", 1)[1].split("<h2>", 1)[0]
    assert f"<tr><td>{html.escape(NASTY)}</td>" in per_class  # its class has the gold value's name
    for gold, name in (("2", "Sports"), ("3", "Business"), ("4", "Sci/Tech")):  # the class a labeler knows, then gold
        assert f"<tr><td>{name} (gold {gold})</td>" in per_class
    # both 2D views, same method side by side
    for view in ("raw_pca", "finetuned_pca"):
        assert f'data-view="{view}"' in page
    # one self-contained file
    assert not _external_refs(page, list(data_texts.values()))
    assert len(list(out.glob("*.html"))) == 1
    assert len(page.encode()) < 3_000_000


# --- a report that answers first (issue 29, item 3) -----------------------------------------------------------------

def _visible_text(page: str) -> str:
    """What a reader sees: no tags, attributes, scripts or styles."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def test_figures_come_first_examples_after_and_the_mode_choice_in_details(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    search = {name: {"lt_10": 1.0, "lt_100": 5.0, "median_results": 100.0, "same_class": 70.0,
                     "first_screen_same": 7.0, "threshold": 1.0, "n_queries": 300}
              for name in ("raw", "finetuned", "stock", "model_door")}
    metrics = {**_metrics(), "threshold_search": search,
               "mode_choice": {"message": "auto: head, full mode estimated at 1,200 s > the 300 s budget"}}
    write_report(path, metrics, data=_tiny_data())
    page = path.read_text(encoding="utf-8")
    title = page.index("<h1>")
    order = [page.index(marker) for marker in ("<h2>Search as refinery runs it", "top_k per class", "2D views",
                                               "Examples: the first screen", "<details>")]
    assert title < order[0] and order == sorted(order)
    assert "<h2>" not in page[title:order[0]]  # no verdict in these metrics: the lead paragraph, then the figures
    assert page.index("Mode choice: auto: head") > page.index("<details>")
    assert re.findall(r"<h3>Example \d+: record", page)
    # the search table names every embedding as a labeler knows it, refinery's stock embedding first
    table = page.split("Search as refinery runs it", 1)[1].split("</table>", 1)[0]
    heads = re.findall(r"<th>([^<]+)</th>", table)
    assert [html.unescape(h) for h in heads] == ["refinery's stock embedding", "raw base model", "model door",
                                                 "snapshot door (as written)"]
    # one spelling in what a reader sees
    assert "finetuned" not in _visible_text(page)


def test_timings_are_a_table(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    metrics = {**_metrics(), "seconds": {"encode": 3.5, "train": 12.25, "smooth": 1.0, "total": 20.0}}
    write_report(path, metrics, data=None)
    page = path.read_text(encoding="utf-8")
    timings = page.split("<h3>Timings</h3>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<tr><td>([^<]+)</td><td>([^<]+)</td></tr>", timings)
    assert cells[-1] == ("the whole run", "20.0") and ("train", "12.2") in cells and len(cells) == 4
    assert "{&#x27;" not in page and "{'" not in page


def test_the_top_k_curve_has_plain_tick_labels() -> None:
    """The log axis reads 10, 100, 1,000: not matplotlib's mathtext, which parse_math off would print as typed."""
    import matplotlib.pyplot as plt

    from kern_finetune.evaluation.report import _curve_figure

    top_k = {"raw": {"10": 70.0, "75": 62.0, "100": 60.0, "1000": 50.0},
             "finetuned": {"10": 80.0, "75": 76.0, "100": 75.0, "1000": 70.0}}
    with plt.rc_context({"text.parse_math": False}):
        fig = _curve_figure(top_k, 25.0)
        fig.canvas.draw()
        ax = fig.axes[0]
        labels = [t.get_text() for t in ax.get_xticklabels(which="both") if t.get_text()]
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["10", "100", "1,000"]  # 75 keeps its tick, not a label that would overprint 100
    assert "fine-tuned" in legend and "finetuned" not in legend


def test_hover_names_the_class_and_examples_show_ranks_not_cosines(tmp_path: Path) -> None:
    data = _tiny_data()
    names = {NASTY: "World", SCRIPTY: "Sports", "Sports & more": "Business"}
    data = ReportData(ids=data.ids, texts=data.texts, labels=data.labels, gold=data.gold,
                      gold_class=[names[g] if g is not None else None for g in data.gold], train_idx=data.train_idx,
                      test_idx=data.test_idx, raw=data.raw, tuned=data.tuned, seed=data.seed)
    path = tmp_path / "report.html"
    write_report(path, _metrics(), data=data)
    page = path.read_text(encoding="utf-8")
    hover = json.loads(re.search(r'<script type="application/json" id="hover-data">(.*?)</script>', page, re.S).group(1))
    assert {v["c"] for v in hover.values()} == {"World", "Sports", "Business"}
    assert "d[i].c" in page and "'gold '+" not in page
    assert "cos " not in page
    screen = first_screen(data)
    for q in screen:
        for name, other in (("raw", "finetuned"), ("finetuned", "raw")):
            x = data.tuned if other == "finetuned" else data.raw
            unit = x / np.linalg.norm(x, axis=1, keepdims=True)
            sims = unit @ unit[q["index"]]
            sims[q["index"]] = -np.inf
            order = list(np.argsort(-sims, kind="stable"))
            for nb in q["neighbours"][name]:
                assert nb["rank_other"] == order.index(nb["index"]) + 1
    assert re.search(r'<span class="sim">#\d+ in raw</span>', page)


def test_label_issues_are_listed_with_text_and_source(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    issues = {"ids": ["r1", "r2"], "given": [SCRIPTY, "Sports"], "suggested": ["World", "World"],
              "probability_given": [0.4, 0.1], "texts": ["a text about <b>", "another text"],
              "sources": ["weak", "weak"], "confidence": [0.93, 0.81]}
    metrics = {**_metrics(), "label_check": {"action": "drop", "n_flagged": 2, "file": "label_issues.csv"}}
    write_report(path, metrics, data=None, label_issues=issues)
    page = path.read_text(encoding="utf-8")
    section = page.split("Label issues: 2 weak labels", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td>(r\d)</td>", section)
    assert rows == ["r2", "r1"]  # the least likely label first
    assert "another text" in section and html.escape("a text about <b>") in section and SCRIPTY not in section
    assert "weak supervision, confidence 0.81" in section and "left them out of training" in page
