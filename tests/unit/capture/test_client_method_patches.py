"""A client method's replacement passes every argument on exactly as the original would receive it, idle
and inside an execution, whatever mix of positional, keyword, defaulted and extra keyword arguments comes."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import fluxrun
from fluxrun.interceptors.base import wrap_client_method


class Pool:
    def urlopen(self, method, url, body=None, headers=None, *, retries=3, **response_kw):
        return (method, url, body, headers, retries, response_kw)

    def execute(self, *args, **options):
        return (args, options)

    def execute_command(self, *args, **options):
        """Only hands its arguments on (redis-py's `Redis.execute_command` since 5.1)."""
        return self._execute_command(*args, **options)

    def _execute_command(self, *args, **options):
        return ("delegate", args, options)


def _passthrough(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return ("seen", wrapped(*args, **kwargs))


CALLS = [
    ("urlopen", ("GET", "/a"), {}),
    ("urlopen", ("GET", "/a", b"x"), {"headers": {"h": "1"}}),
    ("urlopen", ("GET", "/a"), {"retries": 0, "preload_content": False}),
    ("urlopen", (), {"method": "POST", "url": "/b", "extra": 1}),
    ("execute", ("GET", "k"), {}),
    ("execute", ("GET", "k"), {"keys": ["k"]}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), CALLS)
def test_the_replacement_passes_arguments_on_as_they_came(captured, name, args, kwargs):
    original = vars(Pool)[name]
    patched = wrap_client_method(original, _passthrough)
    assert inspect.signature(patched) == inspect.signature(original)
    pool = Pool()
    expected = original(pool, *args, **kwargs)
    assert patched(pool, *args, **kwargs) == expected  # idle: straight through

    @fluxrun.capture
    def job():
        return patched(pool, *args, **kwargs)

    assert job() == ("seen", expected)  # inside an execution: through the wrapper, same arguments


def test_a_varargs_method_is_the_original_itself_outside_an_execution(captured):
    """`*args` methods (redis-py's `execute_command`) are chosen when looked up, so an idle call runs the
    original with no replacement in between, and one inside an execution goes through the wrapper."""
    original = vars(Pool)["execute"]

    class Patched(Pool):
        execute = wrap_client_method(original, _passthrough)

    pool = Patched()
    assert pool.execute.__func__ is original
    assert Patched.execute is original
    assert pool.execute("GET", "k", keys=["k"]) == (("GET", "k"), {"keys": ["k"]})

    @fluxrun.capture
    def job():
        assert pool.execute.__func__ is not original
        return pool.execute("GET", "k", keys=["k"]), Patched.execute(pool, "SET", "k", "v")

    assert job() == (("seen", (("GET", "k"), {"keys": ["k"]})), ("seen", (("SET", "k", "v"), {})))


def test_a_varargs_method_that_only_hands_its_arguments_on_is_replaced_by_the_same_hand_over(captured):
    """`Redis.execute_command` only calls `self._execute_command(*args, **options)`: its replacement does the
    same after one look at the context variable, so an idle command runs no frame more than it did (no
    choice at lookup, no repacking), and one inside an execution goes through the wrapper."""
    original = vars(Pool)["execute_command"]
    calls = []

    def delegate(self, *args, **options):
        calls.append(args)
        return ("delegate", args, options)

    class Patched(Pool):
        execute_command = wrap_client_method(original, _passthrough)
        _execute_command = delegate

    assert inspect.isfunction(vars(Patched)["execute_command"])
    assert inspect.signature(Patched.execute_command) == inspect.signature(original)
    assert Patched.execute_command.__doc__ == original.__doc__
    pool = Patched()
    assert pool.execute_command("GET", "k", keys=["k"]) == ("delegate", ("GET", "k"), {"keys": ["k"]})

    @fluxrun.capture
    def job():
        return pool.execute_command("SET", "k", "v")

    assert job() == ("seen", ("delegate", ("SET", "k", "v"), {}))
    assert calls == [("GET", "k"), ("SET", "k", "v")]


def test_a_varargs_method_that_does_more_than_hand_over_is_chosen_at_lookup(captured):
    def execute_command(self, *args, **options):
        options.setdefault("retries", 1)
        return self._execute_command(*args, **options)

    assert not inspect.isfunction(wrap_client_method(execute_command, _passthrough))


async def _coroutine_method(self, *args, **options):
    return args


def test_a_varargs_coroutine_method_still_looks_like_one_on_its_class(captured):
    class Client:
        execute = wrap_client_method(_coroutine_method, _passthrough)

    assert inspect.iscoroutinefunction(Client.execute)
    assert inspect.iscoroutinefunction(Client().execute)


def test_a_varargs_method_wrapped_again_by_wrapt_still_reaches_both_wrappers(captured):
    """Another tool wrapping the method after FluxRun (OpenTelemetry's redis instrumentation uses wrapt's
    `wrap_function_wrapper` on `Redis.execute_command`) sees FluxRun's replacement and calls through it."""
    import wrapt

    class Client(Pool):
        execute = wrap_client_method(vars(Pool)["execute"], _passthrough)

    seen = []

    def tracer(wrapped, instance, args, kwargs):
        seen.append(args)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(Client, "execute", tracer)
    client = Client()
    assert client.execute("GET", "k") == (("GET", "k"), {})

    @fluxrun.capture
    def job():
        return client.execute("SET", "k", "v")

    assert job() == ("seen", (("SET", "k", "v"), {}))
    assert seen == [("GET", "k"), ("SET", "k", "v")]
