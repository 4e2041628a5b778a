"""Properties computed at batch scale on the batchmd engine: equation of state, elastic tensor, phonons."""
