"""Getting sealed bundles out of the app: a bounded background worker and its destinations."""
