"""Deliberate breakages the test suite must catch (a hand-made mutation check, issue 17).

Each :class:`Mutation` is one exact text edit of one product file. ``$PY tests/mutations.py`` copies the
repository's tracked and untracked-but-not-ignored files into a temporary folder, applies one mutation
there, runs the mutation's tests in that copy and expects them to FAIL; then the next mutation, on a fresh
copy. It prints, per mutation, the tests that caught it, and exits non-zero when a mutation survives (its
tests pass), when its ``old`` text is not found exactly once, or when its tests do not pass on the
unmutated copy (``--no-baseline`` skips that first run).

    $PY tests/mutations.py                        # all of them (tens of minutes on a loaded 2-core machine)
    $PY tests/mutations.py labels-shuffled        # some, by name
    $PY tests/mutations.py --list                 # names and what each breaks

It is not part of ``make test`` (too slow); ``tests/test_mutations.py`` checks in the normal suite that the
list is well-formed and that every ``old`` text still occurs exactly once. When a product file changes
under a mutation, refresh its ``old``/``new`` to a short, distinctive line of the new code.

The list documents what the suite is expected to notice: a pipeline that trains on the wrong labels or
returns raw vectors, a webhook signature that no longer covers its timestamp, a host search that serves
more than refinery's 100 records, pseudo-labels that never train.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    why: str
    """What the mutation breaks, in the words of the product."""
    file: str
    """Path relative to the repository root."""
    old: str
    """Exact text that must occur exactly once in ``file``."""
    new: str
    tests: tuple[str, ...]
    """pytest arguments (node ids, files, ``-k`` expressions) of the tests expected to fail."""


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        name="labels-shuffled",
        why="the head trains on the training labels shuffled among the training rows",
        file="kern_finetune/training/train.py",
        old="xt, yt = base[sel.train_idx], sel.y[sel.train_idx]",
        new="xt, yt = base[sel.train_idx], np.random.default_rng(0).permutation(sel.y[sel.train_idx])",
        tests=("tests/test_cli_run.py::test_fine_tuning_beats_raw_on_the_test_records",),
    ),
    Mutation(
        name="head-skipped",
        why="the raw base vectors are returned (and written) as the fine-tuned ones",
        file="kern_finetune/training/fit.py",
        old="return head_trainer, head_trainer.transform(base)",
        new="return head_trainer, base.copy()",
        tests=("tests/test_cli_run.py::test_fine_tuning_beats_raw_on_the_test_records",),
    ),
    Mutation(
        name="hmac-without-timestamp",
        why="the webhook signature covers the body only, so a captured signature replays with any t=",
        file="kern_finetune/service/signing.py",
        old='str(timestamp).encode("ascii") + b"." + body',
        new="body",
        tests=("tests/service/test_service.py", "-k", "sign or hmac or curl or forged"),
    ),
    Mutation(
        name="search-past-refinery-limit",
        why="the host's similarity search serves up to 1,000 records instead of refinery's 100",
        file="kern_finetune/host/search.py",
        old="positions, _, _ = self._search(row[0], idx, SEARCH_LIMIT)",
        new="positions, _, _ = self._search(row[0], idx, 1000)",
        tests=("tests/host/test_host.py",),
    ),
    Mutation(
        name="pseudo-labels-never-train",
        why="pseudo-labels are found and reported but the head trains on the project's labels only",
        file="kern_finetune/training/fit.py",
        old="train_sel = with_pseudo_labels(sel, pseudo)",
        new="train_sel = sel",
        tests=("tests/test_pseudo.py::test_pipeline_trains_on_pseudo_labels_but_evaluates_on_the_projects_own",),
    ),
    Mutation(
        name="best-state-never-kept",
        why="the engines' shared early stopping records a better loss but never keeps its weights",
        file="kern_finetune/training/trainer.py",
        old="self.best_loss, self.best_at, self.best_state, self.bad = loss, at, snapshot(), 0",
        new="self.best_loss, self.best_at, self.bad = loss, at, 0",
        tests=("tests/test_train_full.py::test_fit_full_trains_the_encoder",),
    ),
)


def check(mutations: tuple[Mutation, ...] = MUTATIONS, root: Path = ROOT) -> list[str]:
    """Problems with the list itself (empty when well-formed): names, files, old texts, test paths."""
    problems = []
    names = [m.name for m in mutations]
    if len(set(names)) != len(names):
        problems.append(f"duplicate mutation names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        count = path.read_text(encoding="utf-8").count(m.old)
        if count != 1:
            problems.append(f"{m.name}: old text found {count} times in {m.file} (must be once): {m.old!r}")
        if m.old == m.new or not m.old.strip():
            problems.append(f"{m.name}: old and new text must differ and old must not be blank")
        for arg in m.tests:
            if arg.startswith("tests/"):
                file, _, func = arg.partition("::")
                test_path = root / file
                if not test_path.is_file():
                    problems.append(f"{m.name}: test file {file} does not exist")
                elif func and not re.search(rf"^def {re.escape(func)}\(", test_path.read_text(encoding="utf-8"), re.M):
                    problems.append(f"{m.name}: no test function {func} in {file}")
        if not any(arg.startswith("tests/") for arg in m.tests):
            problems.append(f"{m.name}: names no test file")
    return problems


def _copy_repo(dest: Path) -> Path:
    """Tracked + untracked-but-not-ignored files into ``dest/repo``; ``dest/shared`` -> the real ../shared."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    repo = dest / "repo"
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / rel)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dest / "shared").symlink_to(shared)
    return repo


def _pytest(repo: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, list[str], str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *tests]
    try:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, [], f"timed out after {timeout:.0f} s"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M)
    tail = "\n".join(proc.stdout.strip().splitlines()[-3:])
    return proc.returncode, failed, tail


def run(mutations: list[Mutation], *, baseline: bool, timeout: float) -> int:
    problems = check(tuple(mutations))
    for p in problems:
        print(f"LIST PROBLEM  {p}")
    if problems:
        return 2
    bad = 0
    rows = []
    for m in mutations:
        with tempfile.TemporaryDirectory(prefix=f"mutation-{m.name}-") as tmp:
            repo = _copy_repo(Path(tmp))
            if baseline:
                rc, failed, tail = _pytest(repo, m.tests, timeout)
                if rc != 0:
                    print(f"BASELINE FAILS  {m.name}: {' '.join(m.tests)} does not pass unmutated (rc {rc}): {failed or tail}")
                    rows.append((m.name, "baseline fails", ", ".join(failed) or tail))
                    bad += 1
                    continue
            target = repo / m.file
            target.write_text(target.read_text(encoding="utf-8").replace(m.old, m.new, 1), encoding="utf-8")
            start = time.perf_counter()
            rc, failed, tail = _pytest(repo, m.tests, timeout)
            took = time.perf_counter() - start
        if rc == 1 and failed:
            rows.append((m.name, "caught", ", ".join(failed)))
            print(f"CAUGHT    {m.name} ({took:.0f} s): {', '.join(failed)}", flush=True)
        else:
            bad += 1
            verdict = "SURVIVED" if rc == 0 else f"unclear (pytest rc {rc})"
            rows.append((m.name, verdict, tail.replace("\n", " ")))
            print(f"{verdict.upper():9} {m.name} ({took:.0f} s): {' '.join(m.tests)} -> {tail}", flush=True)
    print("\n| mutation | result | caught by |\n|---|---|---|")
    for name, verdict, detail in rows:
        print(f"| {name} | {verdict} | {detail} |")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--no-baseline", action="store_true", help="skip checking that the tests pass unmutated")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run (default: %(default)s)")
    args = parser.parse_args(argv)
    by_name = {m.name: m for m in MUTATIONS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] if args.names else list(MUTATIONS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.why}\n    {m.file}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0
    return run(chosen, baseline=not args.no_baseline, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
