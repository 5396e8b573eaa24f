"""refinery-embedder's own sentence-transformers, installed from PyPI beside ours, to load our model folders.

refinery-embedder pins sentence-transformers 2.2.2 (``requirements.txt``) and 3.0.1 (``gpu-requirements.txt``),
each with transformers 4.41.2, tokenizers 0.19.1 and huggingface-hub 0.25.2. Those releases are installed
with ``pip install --no-deps --target`` into a side folder (cached between runs, outside the vector cache
that CI empties) and imported ahead of ours in a subprocess, beside our torch and numpy: the real loaders,
not a transcription of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

EMBEDDER_PINS = {
    "2.2.2": ["sentence-transformers==2.2.2", "nltk==3.8.1"],
    "3.0.1": ["sentence-transformers==3.0.1"],
}
"""Per sentence-transformers release refinery-embedder pins: what to install (2.2.2 imports nltk at import time)."""
SHARED_PINS = ["transformers==4.41.2", "tokenizers==0.19.1", "huggingface-hub==0.25.2"]

_ENCODE = """
import json, sys, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import numpy as np
import sentence_transformers
from sentence_transformers import SentenceTransformer
for i, (folder, texts) in enumerate(json.loads(open(sys.argv[2]).read())):
    model = SentenceTransformer(folder, device="cpu")
    np.save(f"{sys.argv[3]}-{i}.npy", model.encode(texts, batch_size=128, show_progress_bar=False))
print(sentence_transformers.__version__)
"""


def libs_root() -> Path:
    return Path(os.environ.get("KERN_FINETUNE_EMBEDDER_LIBS", Path.home() / ".cache" / "kern-finetune-embedder-libs"))


def embedder_libs(version: str) -> Path:
    """The side folder holding sentence-transformers ``version`` and its pinned companions (installed once)."""
    target = libs_root() / f"sentence-transformers-{version}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
                        "--target", str(tmp), *EMBEDDER_PINS[version], *SHARED_PINS], check=True)
        (tmp / ".complete").write_text("\n".join(EMBEDDER_PINS[version] + SHARED_PINS))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def encode_with(version: str, jobs: list[tuple[Path, list[str]]], work: Path) -> list[np.ndarray]:
    """``SentenceTransformer(folder).encode(texts)`` for each ``(folder, texts)`` of ``jobs``, as refinery's
    embedder runs it, with its pinned release (one process for all of them: its imports are the slow part)."""
    libs = embedder_libs(version)
    work.mkdir(parents=True, exist_ok=True)
    (work / "jobs.json").write_text(json.dumps([[str(folder), texts] for folder, texts in jobs]))
    (work / "encode.py").write_text(_ENCODE)
    out = work / f"vectors-{version}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(work / "encode.py"), str(libs), str(work / "jobs.json"), str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == version, proc.stdout  # the pinned release, not ours, loaded it
    return [np.load(f"{out}-{i}.npy") for i in range(len(jobs))]


if __name__ == "__main__":  # `make test` installs them before the suite runs (Makefile), so no test waits on pip
    for release in sorted(EMBEDDER_PINS):
        print(f"sentence-transformers {release} for refinery's embedder: {embedder_libs(release)}")
