"""Package boundaries: the client never needs the server, the server never imports the customer agent,
a client-only install (`pip install fluxrun`) pulls in no web framework, ORM, S3 client or GraphQL, and
capture (the interceptors) never imports replay."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import fluxrun

SERVER_ONLY = {"fastapi", "starlette", "sqlalchemy", "sqlmodel", "alembic", "boto3", "botocore", "strawberry-graphql",
               "uvicorn", "psycopg", "pydantic-settings"}  # fmt: skip


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(package: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """The distributions `pip install package` would bring, from the installed metadata (no network)."""
    seen: set[str] = set()
    todo = [(package, extras)]
    while todo:
        name, wanted = todo.pop()
        try:
            listed = requires(name) or []
        except PackageNotFoundError:
            continue
        for requirement in listed:
            marker = requirement.partition(";")[2]
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
            if extra and extra.group(1) not in wanted:
                continue
            if "sys_platform" in marker or "python_version" in marker or "platform_" in marker:
                continue  # not this platform's concern here; none of the server libraries hide behind one
            dependency = _name(requirement)
            if dependency not in seen:
                seen.add(dependency)
                todo.append((dependency, frozenset()))
    return seen


def test_a_client_only_install_pulls_in_no_server_library():
    brought = _closure("fluxrun")
    assert brought, "fluxrun's metadata lists no dependencies: is it installed (pip install -e .)?"
    assert not brought & SERVER_ONLY, f"pip install fluxrun would bring {sorted(brought & SERVER_ONLY)}"
    assert _closure("fluxrun", frozenset({"server"})) & {"fastapi", "sqlalchemy"}  # the check can see them


def _modules_after(code: str) -> set[str]:
    """Every module loaded in a fresh interpreter after running `code`."""
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_the_client_cli_never_imports_the_server():
    loaded = {m.split(".")[0] for m in _modules_after("import fluxrun, fluxrun.cli, fluxrun.replay, fluxrun.agent")}
    assert "fluxrun_server" not in loaded
    assert not loaded & {"fastapi", "sqlalchemy", "sqlmodel", "boto3", "strawberry"}


def test_the_server_never_imports_the_customer_agent():
    loaded = _modules_after("import fluxrun_server.main, fluxrun_server.grants, fluxrun_server.cli")
    assert "fluxrun_server.main" in loaded and "fluxrun.grant" in loaded
    assert not {m for m in loaded if m.startswith("fluxrun.agent")}


SRC = Path(fluxrun.__file__).parent


def _imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names, at any level (inside functions too), made absolute."""
    package = "fluxrun." + ".".join(path.relative_to(SRC).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rstrip(".").rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from fluxrun import replay`
    return found


def test_capture_never_imports_replay():
    """Interceptors answer through `fluxrun.answering`; only replay may import the other side."""
    checked = [*sorted((SRC / "interceptors").glob("*.py")), SRC / "_context.py", SRC / "answering.py"]
    assert len(checked) > 10
    for path in checked:
        wrong = {m for m in _imported_modules(path) if m == "fluxrun.replay" or m.startswith("fluxrun.replay.")}
        assert not wrong, f"{path.relative_to(SRC)} imports {sorted(wrong)}"


def test_the_replay_session_implements_what_the_interceptors_call():
    from fluxrun.answering import Answering, Pacing
    from fluxrun.replay.session import ReplaySession

    session = ReplaySession({"events": []})
    assert isinstance(session, Answering)
    for member in ("touch", "thread_started", "thread_finished"):
        assert callable(getattr(session.scheduler, member)), member
    assert {"touch", "thread_started", "thread_finished"} <= set(dir(Pacing))
