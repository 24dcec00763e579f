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


# The code the agent runs now, against bundles captured from older code: the tests flip these flags off
# while capturing, so the agent's replay finds the failure fixed, or the code making a call the recording
# never saw (a divergence).
RATES_FIXED = True
SENDS_RECEIPT = True


@fluxrun.boundary("email.send")
def send_receipt(order_id: int) -> None:
    """A declared host call that newer code added."""


@fluxrun.capture
def convert(amount: int) -> int:
    account = load_account(8)
    if RATES_FIXED:
        return amount
    return amount * account["rates"]["EUR"]  # the old bug


@fluxrun.capture
def refund(order_id: int) -> int:
    if SENDS_RECEIPT:
        send_receipt(order_id)
    raise ValueError(f"order {order_id} was already refunded")
