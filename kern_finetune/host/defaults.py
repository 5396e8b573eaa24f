"""The local host's defaults, in a module that imports nothing heavy (the CLI's ``--help`` reads them)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DATA_DIR", "DEMO_PASSWORD", "DEMO_USER"]

DEMO_USER = "demo@kern.ai"
DEMO_PASSWORD = "kern-demo"
"""The documented demo credentials: only for a host bound to a loopback address."""
DEFAULT_DATA_DIR = Path(".kern-host")
