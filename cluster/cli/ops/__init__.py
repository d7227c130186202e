"""Top-level operator commands (`thawline deploy|status|chat|usage`): commands.py mounts them."""
