"""The demo shop that `fluxrun demo` runs: app code of the kind FluxRun users write, kept outside `fluxrun`."""
