"""Properties of many structures at batch scale (equation of state, elastic tensor, phonons)."""
