"""Vectors: the base model's (cached), the neighbour smoothing, the search spread, the model door's map."""
