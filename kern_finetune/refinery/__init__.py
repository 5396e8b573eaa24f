"""Everything that speaks refinery's formats and API, and nothing that trains (no torch, no sklearn).

One line per module: ``docs/architecture.md``.
"""
