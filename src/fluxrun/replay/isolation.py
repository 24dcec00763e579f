"""Replay in a child process that cannot reach anything live.

A replay runs the app's code on data from a bundle, so whatever that code does must stay inside: a
driver that opens its own socket from C (libpq), a `subprocess.run`, a DNS lookup, a UDP datagram. The
interceptors answer the calls FluxRun knows; this module contains the rest.

The parent forks; the child, before it runs anything of the app's:

1. enters a new network namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)` on Linux, or `CLONE_NEWNET`
   alone for a privileged root). Inside, no interface is up: every connection or datagram, from Python
   or from C, fails in the kernel, and the kernel's counters show that it was tried;
2. replaces every socket it inherited (the parent's listening socket, a pooled database connection) with
   a fresh unconnected one, so nothing can write through a connection opened outside the namespace;
3. adds an audit hook that stops connects, datagrams, DNS lookups and process creation made from Python
   with `LiveIOBlocked`, naming what was tried and the app's line.

Where the kernel refuses a namespace (some containers, macOS), steps 2 and 3 still hold and
`ReplayResult.isolation` says that C extensions are not contained. The child sends its result back as
JSON (never pickle: the parent does not trust what a replay produced) and exits; the serving process
(the agent, or an app that mounts it) never has its own sockets touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import os
import select
import signal
import socket
import stat
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import orjson

from fluxrun._platform import warm_platform_probe
from fluxrun.errors import BundleError, FluxRunError, LiveIOBlocked, ReplayDivergence
from fluxrun.model.values import UnreplayableValue, decode, encode
from fluxrun.replay.result import Outcome, ReplayResult

__all__ = ["ENV", "IN_PROCESS", "ReplayCrashed", "run_in_child", "wanted"]

ENV = "FLUXRUN_REPLAY_ISOLATE"
IN_PROCESS = "off: replayed in this process (Python sockets and DNS blocked; C extensions and subprocesses are not)"
DEFAULT_TIMEOUT = 300.0
_MAX_RESULT = 64 << 20

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


class ReplayCrashed(FluxRunError):
    """The replayed code raised something that is not a replay verdict (an import error, a bug at set-up)."""


def wanted(isolate: bool | None) -> bool:
    """The caller's choice, else `FLUXRUN_REPLAY_ISOLATE` (on unless 0/false/no/off)."""
    if isolate is not None:
        return isolate
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def run_in_child(replay: Callable[[], ReplayResult], *, timeout: float = DEFAULT_TIMEOUT) -> ReplayResult:
    """Run `replay` in a forked, network-less child and return its result (or raise its error) here."""
    if not hasattr(os, "fork"):
        result = replay()
        result.isolation = IN_PROCESS + " (this platform cannot fork)"
        return result
    warm_platform_probe()  # the child blocks processes from its start: ask the stdlib's `uname -p` here
    read_fd, write_fd = os.pipe()
    # The child must not run the garbage collector over the parent's heap: touching every object's header
    # copies every page (copy-on-write), a cost per replay that grows with the parent's heap.
    gc.freeze()
    pid = -1
    try:
        with warnings.catch_warnings():  # 3.12+ warns about forking a threaded process; the child only replays
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    finally:
        if pid != 0:
            gc.unfreeze()
    if pid == 0:  # pragma: no cover - runs in the child, which never returns
        code = 0
        try:
            gc.disable()  # a short-lived process: its garbage goes with it
            os.close(read_fd)
            _child(replay, write_fd)
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        data = _collect(read_fd, pid, timeout)
    finally:
        os.close(read_fd)
    return _from_wire(data)


# --- the child ----------------------------------------------------------------------------------------


def _child(replay: Callable[[], ReplayResult], write_fd: int) -> None:
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C in a terminal reaches the parent, which kills us
    protection, counted = _enter_sandbox(keep={write_fd})
    before = _kernel_attempts() if counted else 0
    try:
        message: dict[str, Any] = {"result": _result_to_wire(replay())}
    except BaseException as exc:
        message = {"error": _error_to_wire(exc)}
    escaped = _kernel_attempts() - before if counted else 0
    if escaped > 0 and message.get("error", {}).get("type") != "live_io_blocked":
        message = {
            "error": {
                "type": "live_io_blocked",
                "host": "the network",
                "site": "code below Python (a C extension)",
                "message": (
                    f"replay blocked {escaped} network attempt(s) made below Python (seen by the kernel in the "
                    "replay's network namespace): a C extension (a database driver such as libpq, a native "
                    "client) opened its own socket, which FluxRun does not intercept. Replay never reaches "
                    "live systems; declare that client's calls with @fluxrun.boundary so they are recorded."
                ),
            }
        }
    message["isolation"] = protection
    data = orjson.dumps(message, default=_unknown)
    view = memoryview(data)
    while view:
        view = view[os.write(write_fd, view) :]


def _enter_sandbox(keep: set[int]) -> tuple[str, bool]:
    """Cut the child off the network; say which protection holds and whether kernel counters are ours."""
    reason = _unshare_network()
    _neutralise_inherited_sockets(keep)
    filtered = _deny_below_python(network_contained=reason is None)
    sys.addaudithook(_audit)
    parts = ["connects, datagrams, DNS lookups and processes from Python are stopped with LiveIOBlocked"]
    if reason is None:
        parts.insert(0, "no interface is up, for Python or C code")
    if filtered is None:
        parts.append(
            "exec and Unix sockets" + (", connect, sendto and sendmsg" if reason else "") + " refused to C code"
        )
    label = {
        (True, True): "network namespace + seccomp",
        (True, False): "network namespace",
        (False, True): "seccomp (no network namespace)",
        (False, False): "Python-level only",
    }[(reason is None, filtered is None)]
    text = f"{label}: " + "; ".join(parts)
    missing = [r for r in (reason, filtered) if r is not None]
    if missing:
        text += " (not in force: " + "; ".join(missing) + ")"
    return text, reason is None


def _unshare_network() -> str | None:
    """Enter a new network namespace; None when it worked, else why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, this is {sys.platform}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError as exc:
        return f"cannot load libc: {exc}"
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) == 0:
        for path, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with contextlib.suppress(OSError), open(f"/proc/self/{path}", "w") as handle:
                handle.write(text)  # keep our own uid visible inside (as `unshare -r` would map it to root)
        return None
    first = ctypes.get_errno()
    if libc.unshare(_CLONE_NEWNET) == 0:  # a root with CAP_SYS_ADMIN but no user namespaces
        return None
    return f"the kernel refused a network namespace: {os.strerror(first)}"


# seccomp: what a C extension would use to reach anything outside (Python's own calls are audited first)
_SECCOMP_ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (
        0xC000003E,
        {"socket": 41, "connect": 42, "sendto": 44, "sendmsg": 46, "sendmmsg": 307, "execve": 59, "execveat": 322},
    ),
    "aarch64": (
        0xC00000B7,
        {"socket": 198, "connect": 203, "sendto": 206, "sendmsg": 211, "sendmmsg": 269, "execve": 221, "execveat": 281},
    ),
}
_AF_UNIX = 1


class _SockFilter(ctypes.Structure):
    _fields_ = (("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32))


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter)))


def _deny_below_python(*, network_contained: bool) -> str | None:
    """Install a seccomp filter for what C code could do that no audit hook sees. None when it is in force.

    Always: exec fails with EACCES, and so does creating a Unix socket (a network namespace does not
    cover them: libpq's default connection is one). Without a network namespace, connect, sendmsg and
    sendto to an address fail too. Inside one, IP attempts are left to the namespace, whose counters
    then show them, so the replay can fail loudly (glibc's own Unix-socket probes, such as nscd's, just
    fall back, so they are never mistaken for the app's IO).
    """
    machine = os.uname().machine if hasattr(os, "uname") else ""
    arch = _SECCOMP_ARCHES.get(machine)
    if not sys.platform.startswith("linux") or arch is None:
        return f"seccomp filters need Linux on x86_64 or aarch64, this is {sys.platform} {machine}"
    audit_arch, nr = arch
    ld, jeq, ret = 0x20, 0x15, 0x06

    def arg(i: int, high: bool = False) -> int:  # offset of seccomp_data.args[i] (its low or high word)
        return 16 + 8 * i + (4 if high else 0)

    # Each rule: (syscall, checks) where checks are (offset, value, deny_if_equal) on the call's arguments.
    rules: list[tuple[int, list[tuple[int, int, bool]]]] = [
        (nr["execve"], []),
        (nr["execveat"], []),
        (nr["socket"], [(arg(0), _AF_UNIX, True)]),
    ]
    if not network_contained:
        rules += [
            (nr["connect"], []),
            (nr["sendmsg"], []),
            (nr["sendmmsg"], []),
            (nr["sendto"], [(arg(4), 0, False), (arg(4, high=True), 0, False)]),
        ]
    # Instructions with symbolic targets ("deny", "allow", "next" = the next rule), resolved below.
    code: list[tuple[int, Any, Any, int]] = [(ld, 0, 0, 4), (jeq, 0, "allow", audit_arch)]  # another ABI: allow
    for number, checks in rules:
        code.append((ld, 0, 0, 0))  # seccomp_data.nr
        if not checks:
            code.append((jeq, "deny", 0, number))
            continue
        code.append((jeq, 0, "next", number))
        for index, (offset, value, deny_if_equal) in enumerate(checks):
            code.append((ld, 0, 0, offset))
            last = index == len(checks) - 1
            if deny_if_equal:
                code.append((jeq, "deny", "next" if last else 0, value))
            else:  # deny unless every checked word equals value (a non-NULL pointer)
                code.append((jeq, "allow" if last else 0, "deny", value))
        code.append(("next",))  # type: ignore[arg-type]
    code += [(ret, 0, 0, 0x7FFF0000), (ret, 0, 0, 0x00050000 | 13)]  # ALLOW; ERRNO | EACCES
    program = _resolve_jumps(code)
    filters = (_SockFilter * len(program))(*[_SockFilter(*op) for op in program])
    prog = _SockFprog(len(program), filters)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS, required to filter without privileges
        return f"prctl(NO_NEW_PRIVS) failed: {os.strerror(ctypes.get_errno())}"
    if libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        return f"the kernel refused a seccomp filter: {os.strerror(ctypes.get_errno())}"
    return None


def _resolve_jumps(code: list[tuple[Any, ...]]) -> list[tuple[int, int, int, int]]:
    """Turn symbolic jump targets into BPF's relative offsets ("next" markers end a rule)."""
    program: list[tuple[Any, ...]] = []
    pending: list[int] = []  # instructions waiting for the next rule's first index
    fixups: list[tuple[int, int, str]] = []
    for op in code:
        if op == ("next",):
            for at in pending:
                fixups.append((at, len(program), "next"))
            pending = []
            continue
        if "next" in (op[1], op[2]):
            pending.append(len(program))
        program.append(op)
    allow, deny = len(program) - 2, len(program) - 1
    resolved: list[tuple[int, int, int, int]] = []
    next_of = {at: target for at, target, _ in fixups}
    for index, (op, jt, jf, k) in enumerate(program):
        targets = {"allow": allow, "deny": deny, "next": next_of.get(index, allow)}
        jt = targets[jt] - index - 1 if isinstance(jt, str) else jt
        jf = targets[jf] - index - 1 if isinstance(jf, str) else jf
        resolved.append((op, jt, jf, k))
    return resolved


def _neutralise_inherited_sockets(keep: set[int]) -> None:
    """Swap every inherited socket descriptor for a fresh, unconnected one (the parent's stays open)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, 1024))
    for fd in fds:
        if fd in keep or fd < 3:
            continue
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as dead:
                os.dup2(dead.fileno(), fd)
        except OSError:
            continue


def _kernel_attempts() -> int:
    """Packets the kernel was asked to send in this namespace (sent, or refused for want of a route)."""
    total = 0
    with contextlib.suppress(OSError), open("/proc/net/snmp") as handle:
        lines = handle.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2], strict=False):
            if names.startswith("Ip:") and values.startswith("Ip:"):
                row = dict(zip(names.split()[1:], values.split()[1:], strict=False))
                total += int(row.get("OutRequests", 0)) + int(row.get("OutNoRoutes", 0))
    with contextlib.suppress(OSError), open("/proc/net/snmp6") as handle:
        for line in handle:
            name, _, value = line.partition(" ")
            if name in ("Ip6OutRequests", "Ip6OutNoRoutes"):
                total += int(value.strip() or 0)
    return total


def _address(value: Any) -> str:
    if isinstance(value, tuple) and value:
        return f"{value[0]}:{value[1]}" if len(value) > 1 else str(value[0])
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _command(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(os.fsdecode(v) if isinstance(v, (str, bytes)) else str(v) for v in value)
    return os.fsdecode(value) if isinstance(value, (str, bytes)) else str(value)


# audit event -> (what it is, how to name its target from the event's arguments)
_BLOCKED: dict[str, tuple[str, Callable[[tuple[Any, ...]], str]]] = {
    "socket.connect": ("connection to", lambda a: _address(a[1])),
    "socket.sendto": ("datagram to", lambda a: _address(a[1])),
    "socket.sendmsg": ("message to", lambda a: _address(a[1])),
    "socket.getaddrinfo": ("DNS lookup of", lambda a: str(a[0])),
    "socket.gethostbyname": ("DNS lookup of", lambda a: str(a[0])),
    "socket.gethostbyaddr": ("reverse DNS lookup of", lambda a: str(a[0])),
    "socket.getnameinfo": ("reverse DNS lookup of", lambda a: _address(a[0])),
    "subprocess.Popen": ("process", lambda a: _command(a[1] if a[1] is not None else a[0])),
    "os.system": ("shell command", lambda a: _command(a[0])),
    "os.exec": ("exec of", lambda a: _command(a[1] or a[0])),
    "os.posix_spawn": ("process", lambda a: _command(a[1] or a[0])),
    "os.spawn": ("process", lambda a: _command(a[2] or a[1])),
    "os.fork": ("fork of", lambda a: "this process"),
    "os.forkpty": ("fork of", lambda a: "this process"),
}


def _audit(event: str, args: tuple[Any, ...]) -> None:
    blocked = _BLOCKED.get(event)
    if blocked is None:
        return
    from fluxrun.replay.sockets import blocked_error, lookup_error

    if event == "socket.getaddrinfo":
        raise lookup_error(args[0] if args else "?", args[1] if len(args) > 1 else None)

    what, target = blocked
    try:
        name = target(args)
    except Exception:
        name = "?"
    raise blocked_error(name, what)


# --- the wire -----------------------------------------------------------------------------------------


def _unknown(value: Any) -> Any:
    return encode(value)


def _result_to_wire(result: ReplayResult) -> dict[str, Any]:
    wire = dataclasses.asdict(result)
    wire["response"] = encode(result.response)
    wire["value"] = encode(result.value)
    return wire


def _error_to_wire(exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    if isinstance(exc, ReplayDivergence):
        return {
            "type": "divergence",
            "message": message,
            "call": exc.call,
            "site": exc.site,
            "kind": exc.kind,
            "actual": exc.actual,
        }
    if isinstance(exc, LiveIOBlocked):
        return {"type": "live_io_blocked", "message": message, "host": exc.host, "site": exc.site}
    if isinstance(exc, BundleError):
        return {"type": "bundle", "message": message, "reason": exc.reason}
    if isinstance(exc, FluxRunError):
        return {"type": "fluxrun", "message": message}
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    text = "".join(traceback.format_exception(exc))[-8000:]
    return {"type": "crashed", "message": f"{name}: {message}", "traceback": text}


def _collect(fd: int, pid: int, timeout: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FluxRunError(
                    f"the replay did not finish within {timeout:.0f} s; its process was stopped. A replay never "
                    "waits for real time (sleeps return at once), so the code is looping or blocked on a lock"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > _MAX_RESULT:
                raise FluxRunError(f"the replay's result is over {_MAX_RESULT >> 20} MiB; refused")
            chunks.append(chunk)
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)
        raise
    _, status = os.waitpid(pid, 0)
    if not chunks:
        raise FluxRunError(
            f"the replay's process ended without a result ({_exit_text(status)}): the replayed code exited or "
            "crashed the interpreter (os._exit, a segfault in a C extension); run with FLUXRUN_REPLAY_ISOLATE=0 "
            "to see it in this process"
        )
    return b"".join(chunks)


def _exit_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


def _from_wire(data: bytes) -> ReplayResult:
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FluxRunError("the replay's process sent back something that is not a result") from None
    isolation = str(message.get("isolation", ""))
    error = message.get("error")
    if error is not None:
        raise _error_from_wire(error, isolation)
    wire = message["result"]
    return ReplayResult(
        bundle_id=wire["bundle_id"],
        entry=wire["entry"],
        outcome=wire["outcome"],
        original=Outcome(**wire["original"]),
        new=Outcome(**wire["new"]),
        served=wire["served"],
        recorded_calls=wire["recorded_calls"],
        unconsumed=wire["unconsumed"],
        events=[tuple(e) for e in wire["events"]],
        response=_decoded(wire["response"]),
        value=_decoded(wire["value"]),
        warnings=wire["warnings"],
        isolation=isolation,
        supplied=wire["supplied"],
    )


def _decoded(data: Any) -> Any:
    try:
        return decode(data)
    except (UnreplayableValue, Exception):
        return data  # kept as its recorded description


def _error_from_wire(error: dict[str, Any], isolation: str) -> Exception:
    kind, message = error.get("type"), str(error.get("message", ""))
    if kind == "divergence":
        divergence = ReplayDivergence(message, call=error["call"], site=error["site"], kind=error["kind"])
        divergence.actual = [tuple(a) for a in error.get("actual", [])]
        return divergence
    if kind == "live_io_blocked":
        return LiveIOBlocked(f"{message} [isolation: {isolation}]", host=error["host"], site=error["site"])
    if kind == "bundle":
        return BundleError(error["reason"], message)
    if kind == "crashed":
        return ReplayCrashed(f"the replayed code raised {message}\n{error.get('traceback', '')}".rstrip())
    return FluxRunError(message)
