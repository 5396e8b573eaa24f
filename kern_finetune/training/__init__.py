"""Stage 3: the fit and its engines (one trainer interface), losses, samplers, heads, the --mode auto estimate."""
