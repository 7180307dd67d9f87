"""Predicting a recipe without fine-tuning it: exact costs from shapes, latency from a
per-block table measured once, accuracy from the sensitivity table corrected by finished
trials, and the expected hypervolume improvement a predictor-guided sampler maximises."""
