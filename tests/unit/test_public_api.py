"""The public surface is deliberate: `fluxrun.__all__` lists exactly the product's names, sorted."""

from __future__ import annotations

import fluxrun


def test_all_is_exactly_the_sorted_public_names():
    public = sorted(name for name in vars(fluxrun) if not name.startswith("_") or name == "__version__")
    # submodules are attributes too; `fluxrun.replay` is the one deliberately in the namespace (a callable module)
    public = [n for n in public if not isinstance(getattr(fluxrun, n), type(fluxrun)) or n in ("__version__", "replay")]
    assert fluxrun.__all__ == sorted(fluxrun.__all__)
    assert set(fluxrun.__all__) == set(public)


def test_the_product_names_exist():
    for name in (
        "init",
        "capture",
        "boundary",
        "flush",
        "shutdown",
        "FluxRunMiddleware",
        "FluxRunWSGIMiddleware",
    ):
        assert name in fluxrun.__all__
    assert issubclass(fluxrun.BundleError, fluxrun.FluxRunError)
