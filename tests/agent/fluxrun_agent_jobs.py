"""A captured job for the agent tests. The agent process imports it too (its folder is on PYTHONPATH), so
`replay` can run it again there: keep it importable and free of side effects."""

from __future__ import annotations

import logging
import os
from typing import Any

import fluxrun


@fluxrun.boundary("accounts.load")
def load_account(account_id: int) -> dict[str, Any]:
    """A declared host call: recorded at capture, served from the recording at replay (its body never runs)."""
    return {"id": account_id, "plan": "pro", "password": "hunter2-account"}


@fluxrun.capture
def charge(account_id: int, amount: int) -> int:
    account = load_account(account_id)
    currency = os.environ.get("SHOP_CURRENCY", "EUR")
    os.environ.get("SHOP_DB_PASSWORD")
    logging.getLogger("billing").warning("charging %s with password=%s", account_id, account["password"])
    return amount * account["rates"][currency]  # the bug: accounts no longer carry rates -> KeyError
