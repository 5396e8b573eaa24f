"""Every figure README.md and docs/results.md report comes from a committed results file in ``benchmarks/results/``.

The measurements live in ``docs/results.md``; the README keeps a short "What you get" table. A figure is a
number in a measurement section (README's "## What you get", docs/results.md's "## What it measured") or a
timing anywhere in either file (a number followed by ``s``, ``min``, ``minutes`` or ``seconds``). It has a
source when a number in a results file, rounded the way the text writes it, gives it:

- ``76.15`` needs a number that rounds to 76.15; ``71.2`` one that rounds to 71.2 (71.20, 71.23, ...);
- ``4,400`` (trailing zeros) one that rounds to the hundreds (4,413); ``9,146`` the exact count;
- ``~20 min`` / ``6 minutes``: a number of seconds that gives that many minutes, rounded;
- a sign (``+3.1``) is ignored: the source may be a gain or its two ends.

Where the paragraph (for a table: it or its caption, the paragraph before it) names results files (``compare.md``, ``full_mode.json``, ...),
only those files count (``X.md`` also opens ``X.json``), and ``docs/*.md`` or ``samples/*.md`` files it names
by path count too (figures quoted from elsewhere: the 2022 blog, the sample's make-up); otherwise the section's named files, else any results file. Numbers inside backticks
or fenced code blocks (commands, options), settings (after ``>``, ``<``, ``=``, ``lr``, ``alpha``), years, and
small counts below 10 (seeds, cores) are not figures. A new figure passes as soon as the results file it comes
from is committed and named in its paragraph.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS_DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "benchmarks" / "results"
MEASURED_SECTIONS = ("What it measured", "What you get")

NUMBER = re.compile(r"(?<![\w.=/^])(?<![A-Za-z]-)([+-]?)(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e-?\d+)?)(?![\w.]*\w)(?!\.\d)")
SETTING = re.compile(r"(?:[<>=]\s*|\blr\s+|\balpha\s+)$")
TIME_UNIT = re.compile(r"^\s*(s|seconds?|min|minutes?)\b")


def _numbers_in(text: str) -> list[float]:
    out = []
    for m in re.finditer(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?", text):
        try:
            x = abs(float(m.group(0).replace(",", "")))
        except ValueError:
            continue
        if math.isfinite(x) and x < 1e15:
            out.append(x)
    return out


def _json_numbers(obj: object) -> list[float]:
    if isinstance(obj, bool):
        return []
    if isinstance(obj, (int, float)):
        return [abs(float(obj))] if math.isfinite(obj) and abs(obj) < 1e15 else []
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _json_numbers(v)]
    if isinstance(obj, list):
        return [x for v in obj for x in _json_numbers(v)]
    if isinstance(obj, str):
        return _numbers_in(obj)
    return []


def results_numbers(readme: str = "") -> dict[str, list[float]]:
    """Every number in every results file (by file name), and in every other repository ``.md`` file that
    ``readme`` names by its path (``docs/baseline.md``, ``samples/README.md``: facts quoted from elsewhere)."""
    out: dict[str, list[float]] = {}
    for rel in sorted(set(re.findall(r"\b((?:docs|samples)/[\w./-]+\.md)\b", readme))):
        if (ROOT / rel).is_file():
            out[rel] = _numbers_in((ROOT / rel).read_text(encoding="utf-8"))
    for path in sorted(RESULTS.iterdir()):
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            out[path.name] = _json_numbers(json.loads(text))
        elif path.suffix == ".jsonl":
            out[path.name] = [x for line in text.splitlines() if line.strip() for x in _json_numbers(json.loads(line))]
        elif path.suffix == ".md":
            out[path.name] = _numbers_in(text)
    return out


def _sections(readme: str) -> list[tuple[str, list[str]]]:
    """``[(section title, [blocks])]``: blocks are paragraphs or tables (blank-line separated); fenced code
    blocks are left out (commands, not figures)."""
    out: list[tuple[str, list[str]]] = []
    title, block, blocks = "", [], []
    fenced = False
    for line in readme.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        if line.startswith("## "):
            if block:
                blocks.append("\n".join(block))
            out.append((title, blocks))
            title, block, blocks = line[3:].strip(), [], []
        elif line.strip():
            block.append(line)
        elif block:
            blocks.append("\n".join(block))
            block = []
    out.append((title, blocks))
    return out


def _named_files(text: str, known: set[str]) -> set[str]:
    """Results files a paragraph names (``compare.md`` also opens ``compare.json``: the same benchmark's
    unrounded figures), and ``docs/*.md`` it names (figures quoted from elsewhere, e.g. the 2022 blog)."""
    names = set(re.findall(r"\b(?:docs|samples)/[\w./-]+\.md\b", text))
    for name in re.findall(r"[\w.-]+\.(?:md|json|jsonl)\b", text):
        stem = name.rsplit(".", 1)[0]
        names |= {name, f"{stem}.md", f"{stem}.json", f"{stem}.jsonl"}
    return names & known


def readme_figures(readme: str, known: set[str]) -> list[dict]:
    """The figures README reports, each with its text, value, precision, unit and allowed sources."""
    figures = []
    for title, blocks in _sections(readme):
        section_files = set().union(*[_named_files(b, known) for b in blocks]) if blocks else set()
        for n, block in enumerate(blocks):
            # a table's sources are named in its caption, the paragraph just before it
            caption = _named_files(blocks[n - 1], known) if n and block.startswith("|") else set()
            files = _named_files(block, known) or caption or section_files or known
            plain = re.sub(r"`[^`]*`", lambda m: " " * len(m.group(0)), block)  # commands and options are not figures
            for m in NUMBER.finditer(plain):
                raw = m.group(2)
                unit_m = TIME_UNIT.match(plain[m.end():])
                unit = None if unit_m is None else ("min" if unit_m.group(1).startswith("min") else "s")
                if not title.startswith(MEASURED_SECTIONS) and unit is None:
                    continue
                if SETTING.search(plain[max(0, m.start() - 12) : m.start()]):
                    continue  # a setting (confidence > 0.7, lr 3e-5, t=0.5), not a measurement
                value = float(raw.replace(",", ""))
                if unit is None and "." not in raw and "e" not in raw and (value < 10 or 1900 <= value <= 2100):
                    continue  # counts of seeds or cores, years
                line = block[: m.start()].count("\n")
                context = block.splitlines()[line].strip()
                figures.append({"text": raw + (f" {unit}" if unit else ""), "value": value, "raw": raw, "unit": unit,
                                "files": sorted(files), "context": context[:120]})
    return figures


def _decimals(raw: str) -> int:
    """Rounding README applied: 76.15 -> 2, 71.2 -> 1, 412 -> 0, 4,400 -> -2, 20,000 -> -4."""
    if "e" in raw:
        return 12
    if "." in raw:
        return len(raw.split(".")[1])
    digits = raw.replace(",", "")
    zeros = len(digits) - len(digits.rstrip("0"))
    return -min(zeros, len(digits) - 1) if "," in raw else 0


def has_source(figure: dict, numbers: dict[str, list[float]]) -> bool:
    d = _decimals(figure["raw"])
    want = round(figure["value"], d) if d > 0 else figure["value"]
    for name in figure["files"]:
        for x in numbers.get(name, []):
            candidates = [x / 60.0] if figure["unit"] == "min" else [x]
            for c in candidates:
                got = round(c, d) if d > 0 else round(c, d) if d < 0 else round(c)
                if math.isclose(got, want, rel_tol=0, abs_tol=10 ** (-max(d, 0)) / 1000):
                    return True
    return False


@pytest.mark.parametrize(("doc", "at_least"), [(README, 10), (RESULTS_DOC, 100)], ids=["README", "results"])
def test_every_figure_has_a_results_file(doc: Path, at_least: int):
    text = doc.read_text(encoding="utf-8")
    numbers = results_numbers(text)
    figures = readme_figures(text, set(numbers))
    assert len(figures) >= at_least, f"the figure scan found almost nothing in {doc.name}: has a measurement section moved?"
    missing = [f for f in figures if not has_source(f, numbers)]
    assert not missing, f"{doc.relative_to(ROOT)} figures with no source in benchmarks/results/:\n" + "\n".join(
        f"  {f['text']!r} in: {f['context']!r} (looked in {', '.join(f['files'])})" for f in missing
    )


def test_the_readme_points_to_the_measurements():
    readme = README.read_text(encoding="utf-8")
    assert "docs/results.md" in readme and "## What it measured" not in readme


@pytest.mark.parametrize(
    ("written", "source", "ok"),
    [("76.15", 76.1523, True), ("76.15", 76.16, False), ("71.2", 71.20, True), ("4,400", 4413, True),
     ("4,400", 4468, False), ("9,146", 9146, True), ("412", 412.2, True), ("412", 413.0, False)],
)
def test_rounding_rule(written: str, source: float, ok: bool):
    figure = {"raw": written, "value": float(written.replace(",", "")), "unit": None, "files": ["x.md"]}
    assert has_source(figure, {"x.md": [source]}) is ok


def test_minutes_are_matched_against_seconds_and_files_named_in_the_paragraph():
    readme = "## What it measured\n\nA run takes about 20 min (`full_mode.md`); top_1k 76.15.\n\nOther: 51.6.\n"
    numbers = {"full_mode.md": [1210.0, 76.15], "compare.md": [51.61, 76.3]}
    figures = {f["text"]: f for f in readme_figures(readme, set(numbers))}
    assert set(figures) == {"20 min", "76.15", "51.6"}
    assert figures["20 min"]["files"] == ["full_mode.md"]
    assert has_source(figures["20 min"], numbers) and has_source(figures["76.15"], numbers)
    assert figures["51.6"]["files"] == ["full_mode.md"]  # no file named: the section's files
    assert not has_source(figures["51.6"], numbers)


def test_a_newcomer_reaches_the_doors_within_60_lines():
    """Issue 29 item 4 / issue 31: what it does, the demo, the steps for your own project through the doors that
    exist, and the short "what you get" table, all within the README's first 60 lines."""
    head = "\n".join(README.read_text(encoding="utf-8").splitlines()[:60])
    for must in ("make demo", "make test", "## Use it on your refinery project", "--door model --models-dir",
                 "docs/model-door.md", "--write-snapshot", "## What you get", "docs/results.md"):
        assert must in head, must
    table = [line for line in head.split("## What you get", 1)[1].splitlines() if line.startswith("| ")]
    assert len(table) >= 4 and table[-1].count("|") == table[0].count("|")  # header and three rows, complete
