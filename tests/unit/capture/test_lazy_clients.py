"""FluxRun never imports a client library the app does not use; one the app imports after `fluxrun.init()`
is intercepted from that moment (checked in a fresh interpreter, where nothing else imported them)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_init_imports_no_client_library_and_a_later_import_is_intercepted(keys, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        import fluxrun
        fluxrun.init(directory={str(tmp_path)!r}, capture_key={str(keys.capture)!r})
        clients = ("psycopg", "asyncpg", "sqlalchemy", "aiohttp", "redis", "requests", "urllib3", "aiosmtplib")
        print(sorted(m for m in clients if m in sys.modules))
        import redis
        print(hasattr(vars(redis.Redis)["execute_command"], "__wrapped__"))  # a replacement wraps the original
        fluxrun.shutdown()
        print(hasattr(vars(redis.Redis)["execute_command"], "__wrapped__"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    imported, patched, restored = done.stdout.split()
    assert imported == "[]", done.stdout
    assert patched == "True" and restored == "False", done.stdout
