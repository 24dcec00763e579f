"""A captured job that keeps its replay busy for a while (CPU work, not sleeps, which replay skips), so a
test can send live traffic to the app that mounts the agent while the replay runs."""

from __future__ import annotations

import fluxrun


@fluxrun.capture
def busy_charge(rounds: int) -> int:
    total = 0
    for i in range(rounds):
        total += i * i % 7
    raise KeyError(f"rates ({total})")
