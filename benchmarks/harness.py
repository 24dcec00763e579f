"""What every benchmark here shares: percentiles, a free loopback port and the targets table. Run a
benchmark as `python benchmarks/NAME.py` (this folder is then first on sys.path)."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable
from typing import Any

from rich.markup import escape
from rich.table import Table

__all__ = ["free_port", "percentile", "targets_table", "verdict"]


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile, `q` in 0..100 (50 is the median of an odd count); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def verdict(ok: bool | None) -> str:
    """pass / FAIL (rich markup), or info for a figure with no target."""
    return "info" if ok is None else "[green]pass[/green]" if ok else "[red]FAIL[/red]"


def targets_table(targets: list[dict[str, Any]], quick: bool, *, quick_note: str = "few samples, noisy") -> Table:
    """One row per target: what it is, the measured figure with its unit, pass/FAIL."""
    table = Table(title="Targets" + (f" (quick mode: {quick_note})" if quick else ""), title_justify="left")
    for column in ("target", "measured", "result"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    for target in targets:
        measured = target["measured"]
        figure = f"{measured:,.2f}" if abs(measured) < 100 else f"{measured:,.1f}"
        table.add_row(escape(target["target"]), f"{figure} {target['unit']}", verdict(target["pass"]))
    return table
