"""The routes once the fix is deployed: the same report route, served by the fixed view."""

from django.urls import path

from django_shop import views
from django_shop.urls import index

urlpatterns = [path("", index), path("reports/<str:day>/total", views.daily_total_fixed)]
