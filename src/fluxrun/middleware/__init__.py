"""Capture each HTTP request of an ASGI or WSGI app as one execution."""
