"""A captured job for the dashboard tests. The agent process imports it too (this folder is on its
PYTHONPATH) to replay it from the browser: keep it importable and free of side effects."""

from __future__ import annotations

import logging
import os
from typing import Any

import fluxrun


@fluxrun.boundary("accounts.load")
def load_account(account_id: int) -> dict[str, Any]:
    """A declared host call: recorded at capture, served from the recording at replay."""
    return {"id": account_id, "plan": "pro", "password": "hunter2-account"}


@fluxrun.capture
def charge(account_id: int, amount: int) -> int:
    account = load_account(account_id)
    currency = os.environ.get("SHOP_CURRENCY", "EUR")
    logging.getLogger("billing").warning("charging %s in %s", account_id, currency)
    return amount * account["rates"][currency]  # the bug: accounts no longer carry rates -> KeyError
