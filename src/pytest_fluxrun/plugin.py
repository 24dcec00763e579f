"""pytest plugin (issue 3)."""
