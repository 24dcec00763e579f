"""Pure data model of a captured execution: no IO, no patches."""
