"""FluxRun ingest and query server."""
