"""pytest plugin for FluxRun: `@fluxrun.replay` tests and `--fluxrun-bundles` regression guards."""
