"""The dashboard: the built Svelte app (dashboard/ -> static/dashboard/, shipped in the wheel) served at `/`.

Only two kinds of path: `/` (index.html; pages are hash routes, so the server never needs to know them)
and `/assets/<hashed file>` (immutable, cached for a year). The page calls the query API on this origin
and the customer's agent on its own origin; the headers below keep it from being framed or leaking URLs.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, Response

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parents[2] / "static" / "dashboard"
_ASSET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2"}

# connect-src allows any http(s) origin because the agent's URL is the user's choice (often loopback).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self' http: https:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

router = APIRouter(include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
def index() -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        raise HTTPException(
            503, "the dashboard is not built into this install: run `npm ci && npm run build` in dashboard/"
        )
    return HTMLResponse(page.read_bytes(), headers={**_HEADERS, "Cache-Control": "no-cache"})


@router.get("/assets/{name}")
def asset(name: str) -> Response:
    path = STATIC_DIR / "assets" / name
    if not _ASSET.match(name) or not path.is_file():
        raise HTTPException(404, f"no dashboard asset {name!r}")
    return FileResponse(
        path,
        media_type=_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"},
    )
