"""Stage 1-2: from a project's records to the labels training uses (select, prepare, label check, pseudo-labels)."""
