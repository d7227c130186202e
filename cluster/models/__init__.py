"""Deterministic local Llama checkpoints (`thawline model tiny|bench`): no hub download."""
