"""`fluxrun demo`: run the shop on loopback, let one request fail, capture it, and open the bundle."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from fluxrun.errors import FluxRunError

__all__ = ["run_demo"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise FluxRunError(f"the demo could not start a server on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def run_demo(console: Console, directory: Path) -> Path:
    try:
        import fastapi  # noqa: F401
        import httpx
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise FluxRunError(
            f"fluxrun demo needs {exc.name}: install the server extra with `pip install 'fluxrun[server]'`"
        ) from None
    import fluxrun
    from fluxrun.bundle import generate_keys
    from fluxrun.cli.inspect import inspect_bundle

    step = console.print
    keys_dir, bundles = directory / "keys", directory / "bundles"
    if not (keys_dir / "capture.key").exists():
        generate_keys(keys_dir)
        step(f"1. generated keys in {keys_dir}: capture.key for the app, replay.key for you")
    else:
        step(f"1. reusing keys in {keys_dir}")
    fluxrun.init(
        directory=bundles,
        capture_key=keys_dir / "capture.key",
        release="demo",
        in_app_include=["fluxrun_demo"],
    )
    before = set(bundles.glob("*.fluxrun")) if bundles.exists() else set()
    try:
        from fluxrun_demo import shop, upstream

        with _serve(upstream.app) as pricing_url:
            os.environ["SHOP_PRICING_URL"] = pricing_url
            step(f"2. started the pricing upstream at {pricing_url}")
            with _serve(shop.app) as shop_url:
                step(f"3. started the shop (FastAPI + FluxRunMiddleware) at {shop_url}")
                ok = httpx.get(f"{shop_url}/orders/1/total")
                step(f"4. GET /orders/1/total → {ok.status_code} {ok.text}  (not kept: it succeeded)")
                bad = httpx.get(f"{shop_url}/orders/7/total")
                step(f"5. GET /orders/7/total → {bad.status_code}  (the upstream answered a new schema)")
        fluxrun.flush(10)
    finally:
        fluxrun.shutdown()
        os.environ.pop("SHOP_PRICING_URL", None)
    new = sorted(set(bundles.glob("*.fluxrun")) - before)
    if len(new) != 1:
        raise FluxRunError(f"expected the demo to capture one failure, found {len(new)} new bundles in {bundles}")
    bundle = new[0]
    step(f"6. captured the failure, sealed and signed: {bundle} ({bundle.stat().st_size} bytes)")
    step(f"7. opening it with {keys_dir / 'replay.key'} (what `fluxrun bundle inspect FILE --key` prints):")
    console.rule()
    inspect_bundle(console, bundle, keys_dir / "replay.key", show_secrets=False, as_json=False)
    console.rule()
    step(f"next: fluxrun bundle inspect {bundle} --key {keys_dir / 'replay.key'}")
    return bundle
