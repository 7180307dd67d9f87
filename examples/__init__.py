"""Worked examples: bring your own model and data (run from the repository root)."""
