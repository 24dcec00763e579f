"""A small Django project for the fidelity corpus: a daily report view under gunicorn (test_django_gunicorn)."""
