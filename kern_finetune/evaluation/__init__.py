"""Stage 4: metrics against raw, the verdict without gold, the HTML report."""
