"""Run by `harness.replay_offline` in a fresh Python process: replay a bundle as a CI would, a day later.

The parent removed the app's settings and secrets from this process's environment; here the clock travels
`days_later` days forward (time-machine) before the replays run, so anything that reads the live clock or env
instead of the tape sees a CI, not production. Writes one JSON document to the job's `out` file (not stdout,
which the app may print to): what each replay found.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any

import time_machine

import fluxrun
from fluxrun.replay import Answers, ReplayExpectationError


def build_answers(spec: list[list[Any]] | None) -> Answers | None:
    """`[["http", ["GET", url], {"json": ...}], ["env", ["KEY", "value"], {}]]` -> an `Answers`."""
    if spec is None:
        return None
    answers = Answers()
    for method, args, kwargs in spec:
        getattr(answers, method)(*args, **kwargs)
    return answers


def one_replay(job: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {}
    try:
        result = fluxrun.replay.run(
            job["bundle"],
            job["key"],
            app=job["app"] if job.get("name_app", True) else None,  # None: the entry point the bundle recorded
            expect=job["expect"],
            answers=build_answers(job["answers"]),
        )
    except ReplayExpectationError as exc:
        result = exc.result
        report["expectation_failed"] = str(exc)
    except Exception as exc:
        report["raised"] = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
        report["traceback"] = traceback.format_exc()
        result = None
    report["seconds"] = time.perf_counter() - started
    if result is not None:
        response = result.response or {}
        body = response.get("body")
        report.update(
            outcome=result.outcome,
            entry=result.entry,
            original={"kind": result.original.kind, "status": result.original.status,
                      "error_type": result.original.error_type, "fingerprint": result.original.fingerprint,
                      "message": result.original.message},
            new={"kind": result.new.kind, "status": result.new.status, "error_type": result.new.error_type,
                 "fingerprint": result.new.fingerprint, "message": result.new.message},
            status=response.get("status"),
            body=body.decode("utf-8", "replace") if isinstance(body, (bytes, bytearray)) else body,
            served=result.served,
            supplied=result.supplied,
            unconsumed=len(result.unconsumed),
            isolation=result.isolation,
            warnings=result.warnings,
            summary=result.summary(),
        )  # fmt: skip
    return report


def main() -> None:
    job = json.loads(sys.argv[1])
    sys.path.insert(0, job["app_dir"])  # the app's project folder, as a CI checkout has it
    present = [name for name in job["env_without"] if name in os.environ]
    started = time.perf_counter()
    if job.get("name_app", True):  # as a CI's test module imports the app it guards; else replay must find it
        importlib.import_module(job["app"].partition(":")[0])
    import_seconds = time.perf_counter() - started
    out: dict[str, Any] = {"env_present": present, "real_time": time.time(), "import_seconds": import_seconds}
    with time_machine.travel(time.time() + job["days_later"] * 86_400, tick=True):
        out["replay_time"] = time.time()
        out["runs"] = [one_replay(job) for _ in range(job["times"])]
    with open(job["out"], "w") as file:
        json.dump(out, file)


if __name__ == "__main__":
    main()
