"""An invoice view that fails: Django turns the exception into its own 500 answer."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

import fluxrun


@fluxrun.boundary("billing.load_invoice")
def load_invoice(invoice_id: int) -> dict[str, object]:
    return {"id": invoice_id, "lines": []}


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("shop")


def invoice(request: HttpRequest, invoice_id: int) -> JsonResponse:
    found = load_invoice(invoice_id)
    return JsonResponse({"id": invoice_id, "total": found["total"]})  # KeyError: no total


urlpatterns = [path("", index), path("invoices/<int:invoice_id>", invoice)]
