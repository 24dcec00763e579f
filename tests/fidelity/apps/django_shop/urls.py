"""The project's routes: the failing report and, for the fixed entry point, the same route with the fix."""

from django.http import HttpResponse
from django.urls import path

from django_shop import views


def index(request: object) -> HttpResponse:
    return HttpResponse("shop")


urlpatterns = [path("", index), path("reports/<str:day>/total", views.daily_total)]
