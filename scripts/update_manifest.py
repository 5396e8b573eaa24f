"""Write ``manifest.json``'s ``integratorInputs.variables`` from :class:`kern_finetune.config.RunConfig`.

The run options are defined once, as RunConfig fields with their metadata; the manifest's inputs are made
from them by :func:`kern_finetune.config.manifest_variables`. Run from the repository root after adding or
changing a run option::

    python scripts/update_manifest.py           # rewrite manifest.json
    python scripts/update_manifest.py --check   # exit 1 when manifest.json differs (tests/test_manifest.py)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kern_finetune.config import manifest_variables  # noqa: E402


def render(text: str) -> str:
    """The manifest ``text`` with its variables made from RunConfig, everything else as it was."""
    manifest = json.loads(text)
    manifest["integratorInputs"]["variables"] = manifest_variables()
    return json.dumps(manifest, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=ROOT / "manifest.json")
    parser.add_argument("--check", action="store_true", help="only report whether the file is up to date")
    args = parser.parse_args(argv)
    old = args.manifest.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.manifest} is out of date: run python scripts/update_manifest.py", file=sys.stderr)
            return 1
        return 0
    if new != old:
        args.manifest.write_text(new)
        print(f"updated {args.manifest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
