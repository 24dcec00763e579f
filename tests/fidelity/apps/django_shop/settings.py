"""Settings as a 12-factor project writes them: secrets from the environment, with a development fallback.

The replay process has neither DJANGO_SECRET_KEY nor DJANGO_SETTINGS_MODULE (wsgi.py sets the latter by
default, as Django's own template does), so importing the project at replay must not need production's
environment. The report service's URL and token are read inside the request, where FluxRun records them.
"""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-fidelity-dev-only")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "django_shop.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.security.SecurityMiddleware", "django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, object] = {}
USE_TZ = True
TIME_ZONE = "UTC"
