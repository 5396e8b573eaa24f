"""Stage 5: a run's folder, written whole (model folder, vectors, model card)."""
