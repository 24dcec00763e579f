"""Declared boundaries record their arguments and result or exception; IO inside them is theirs."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

import fluxrun
from fluxrun.model.values import decode


@dataclass
class Charge:
    id: str
    amount: int


class PaymentDeclined(Exception):
    pass


@fluxrun.boundary("payments.charge")
def charge(customer: str, amount: int) -> Charge:
    time.time()  # IO inside a boundary belongs to the boundary call
    return Charge(id=f"ch_{customer}", amount=amount)


@fluxrun.boundary("payments.refund")
def refund(charge_id: str) -> None:
    raise PaymentDeclined(f"cannot refund {charge_id}")


@fluxrun.boundary("db.fetch_user")
async def fetch_user(user_id: int) -> dict:
    return {"id": user_id, "name": "Ada"}


def test_boundary_records_arguments_and_result(captured):
    @fluxrun.capture
    def job():
        charge("cus_1", amount=1200)
        refund("ch_1")

    with pytest.raises(PaymentDeclined):
        job()
    events = captured.events()
    assert [(e["kind"], e["call"]) for e in events] == [
        ("host", "payments.charge"),
        ("host", "payments.refund"),
    ]
    first, second = events
    assert decode(first["data"]["args"]) == ["cus_1"]
    assert decode(first["data"]["kwargs"]) == {"amount": 1200}
    assert decode(first["data"]["result"]) == Charge(id="ch_cus_1", amount=1200)
    assert second["error"]["type"] == f"{__name__}:PaymentDeclined"
    assert isinstance(decode(second["error"]["exception"]), PaymentDeclined)


@pytest.mark.anyio
async def test_async_boundary(captured):
    @fluxrun.capture
    async def job():
        user = await fetch_user(7)
        raise RuntimeError(user["name"])

    with pytest.raises(RuntimeError):
        await job()
    (event,) = captured.events("host")
    assert decode(event["data"]["result"]) == {"id": 7, "name": "Ada"}


def test_boundary_outside_an_execution_just_runs(captured):
    assert charge("cus_2", 5) == Charge("ch_cus_2", 5)
    assert captured.payloads() == []


def test_boundary_needs_a_name():
    with pytest.raises(TypeError, match="needs a name"):
        fluxrun.boundary("")


class Ledger:
    """A boundary declared on a method: the instance is the receiver, not an argument."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    @fluxrun.boundary("ledger.append")
    def append(self, amount: int) -> int:
        self.rows.append(amount)
        return len(self.rows)


def test_a_method_boundary_records_its_arguments_without_the_instance(captured):
    ledger = Ledger()

    @fluxrun.capture
    def job():
        ledger.append(5)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("host")
    assert decode(event["data"]["args"]) == [5]
    assert decode(event["data"]["result"]) == 1
    assert ledger.rows == [5]


def test_a_boundary_keeps_the_function_s_name_and_signature():
    import inspect

    assert charge.__name__ == "charge"
    assert list(inspect.signature(charge).parameters) == ["customer", "amount"]
    assert list(inspect.signature(Ledger.append).parameters) == ["self", "amount"]
