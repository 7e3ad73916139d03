"""One file per model family: how to load/save it, its per-sample loss, its data, how to sample."""
