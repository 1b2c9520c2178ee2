"""Where a request's CPU time goes: one worker under wrk, sampled by py-spy, stacks sorted into parts.

    python -m bench.profile_service [--server service|limit|hand-written] [--endpoint /predict]
                                    [--rows 1] [--connections 8] [--seconds 20] [--rate 250]

The server runs with one worker on a copy of the model store (as in bench/run.py). First an
unprofiled wrk run measures the worker's CPU time per answer; then py-spy samples the worker's
stacks (`py-spy record --threads --full-filenames -f raw`) during a second run. Each sample of the
event-loop thread is charged to the innermost frame that belongs to a known part (numpy or
pydantic-core called from bento/scoring.py counts as scoring, and so on), and each part's share of
the samples times the unprofiled CPU per answer gives microseconds per request. py-spy pauses the
process to read each stack, so the profiled run is slower; the shares, not its speed, are used.

py-spy is not a project dependency: `pip install py-spy` (any environment; it is a single binary),
or point PY_SPY at it. It needs ptrace rights on the worker (root, or kernel.yama.ptrace_scope=0).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from functools import cache
from pathlib import Path

import psutil

from bench import load
from bench.run import RESULTS_DIR, SERVICE, batch_body, copy_store, running
from harness.paths import REPO_ROOT
from wdbc import MALIGNANT_EXAMPLE

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*):(?P<line>\d+)\)$")
PARSING = "request parsing + validation (pydantic, json, bento/schemas.py, bento/validation.py)"
ANSWER = "answer: pydantic models, JSON serialization"
BENTOML = "BentoML: request handling, middlewares, context"
# BentoML builds an inspect.Signature for the API method on every request (_bentoml_sdk/method.py).
BENTOML_INSPECT = "BentoML: inspect.signature of the API method, per request"

# (part, path fragments, function fragments or None for any): the first rule a frame matches names
# its part, and the innermost frame with a part decides. Frames of no part (numpy, most of the standard
# library, C extensions have none) are charged to their nearest caller that has one.
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...] | None]] = [
    ("scoring (bento/scoring.py)", ("/bento/scoring.py",), None),
    ("scikit-learn predict_proba", ("/sklearn/",), None),
    ("the bare app's own code (bench/*_app.py)", ("/bench/",), None),
    ("drift window (bento/drift.py: flock + mmap append)", ("/bento/drift.py",), None),
    ("logging (loguru, bento/logs.py)", ("/loguru/", "/bento/logs.py", "/logging/"), None),
    (
        "metrics (prometheus_client, BentoML's metrics middleware, bento/metrics.py)",
        ("/prometheus_client/", "/bentoml/_internal/server/http/instruments.py", "/bento/metrics.py"),
        None,
    ),
    ("tracing (OpenTelemetry)", ("/opentelemetry/",), None),
    ("our guards (bento/guard.py, bento/errors.py)", ("/bento/guard.py", "/bento/errors.py"), None),
    (PARSING, ("/bento/schemas.py", "/bento/validation.py", "/json/decoder.py"), None),
    (PARSING, ("/pydantic/",), ("validate",)),
    (ANSWER, ("/pydantic/", "/json/"), None),
    ("our handler (bento/service.py: predict, _diagnose, range warnings)", ("/bento/service.py",), None),
    ("our protocol (bento/protocol.py)", ("/bento/protocol.py",), None),
    (BENTOML, ("/bentoml/", "/_bentoml_impl/", "/_bentoml_sdk/"), None),
    ("Starlette: routing, Request, Response", ("/starlette/",), None),
    ("uvicorn + httptools: HTTP parsing, ASGI cycle", ("/uvicorn/", "/httptools/"), None),
    ("asyncio + uvloop: event loop, tasks, timeouts", ("/asyncio/", "/uvloop/"), None),
]
# uvicorn's transport.write is a send() syscall: the kernel's loopback TCP, whoever the server is.
SOCKET_WRITES = "socket writes (transport.write: the kernel's TCP send)"
OTHER = "other"


@cache
def _source_line(path: str, line: int) -> str:
    try:
        return Path(path).read_text().splitlines()[line - 1]
    except (OSError, IndexError, UnicodeDecodeError):
        return ""


def part_of(frames: list[str]) -> str:
    """The part a stack (outermost frame first) is charged to."""
    leaf = _FRAME.match(frames[-1]) if frames else None
    if leaf and "transport.write(" in _source_line(leaf["path"], int(leaf["line"])):
        return SOCKET_WRITES
    for depth in range(len(frames) - 1, -1, -1):
        match = _FRAME.match(frames[depth])
        if match is None:
            continue
        path, function = match["path"], match["function"]
        for part, paths, functions in RULES:
            if any(p in path for p in paths) and (functions is None or any(f in function for f in functions)):
                if part == BENTOML and any("/inspect.py:" in frame for frame in frames[depth + 1 :]):
                    return BENTOML_INSPECT
                return part
    return OTHER


def parse_raw(text: str) -> tuple[Counter[str], Counter[str], int]:
    """(samples per part on the event loop's thread, samples per leaf frame there, other threads' samples)."""
    parts: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    elsewhere = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        thread, *frames = stack.split(";")
        if "MainThread" not in thread:
            elsewhere += int(count)
            continue
        parts[part_of(frames)] += int(count)
        leaves[frames[-1] if frames else thread] += int(count)
    return parts, leaves, elsewhere


def worker_process(process: psutil.Process) -> psutil.Process:
    """The process that serves: BentoML's worker child, or uvicorn itself when it runs one worker."""
    for child in process.children(recursive=True):
        if "_bentoml_impl.worker" in " ".join(child.cmdline()):
            return child
    return process


def py_spy() -> str:
    found = (
        os.environ.get("PY_SPY")
        or shutil.which("py-spy")
        or shutil.which("py-spy", path=str(REPO_ROOT / ".venv/bin"))
    )
    if not found:
        raise SystemExit("py-spy not found: pip install py-spy (or set PY_SPY=/path/to/py-spy)")
    return found


def pin(worker: psutil.Process) -> bool:
    """The worker alone on the last core, wrk and py-spy (this process's children) on the others.

    py-spy counts a thread that is runnable but waiting for a core as busy, at the point where it was
    preempted, and preemption happens mostly on the way out of a syscall (a send() that wakes wrk up):
    sharing a core with wrk would charge the wait to socket writes and the like.
    """
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return False
    worker.cpu_affinity([cores[-1]])
    os.sched_setaffinity(0, cores[:-1])
    return True


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", choices=["service", "limit", "hand-written"], default=SERVICE)
    parser.add_argument("--endpoint", default="/predict", choices=["/predict", "/predict_batch"])
    parser.add_argument("--rows", type=int, default=100, help="rows per /predict_batch request")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=20, help="seconds of sampling")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    args = parser.parse_args(argv)
    spy = py_spy()
    rows = 1 if args.endpoint == "/predict" else args.rows
    body = json.dumps(MALIGNANT_EXAMPLE).encode() if rows == 1 else batch_body(rows)
    url_path = args.endpoint
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        workdir = Path(tmp)
        home = copy_store(workdir / "bentoml")
        with running(args.server, 1, home, workdir) as server:
            worker = worker_process(psutil.Process(server.process.pid))
            pinned = pin(worker)
            load.drive(server.url + url_path, body, args.connections, 2, workdir)  # warm-up
            before = cpu_seconds(worker)
            plain = load.drive(server.url + url_path, body, args.connections, args.seconds, workdir)
            cpu_per_request_us = (cpu_seconds(worker) - before) / plain.count() * 1e6
            rate = plain.count() / plain.duration_s
            raw_path = workdir / "profile.raw"
            profiled: dict[str, load.Run] = {}
            driver = threading.Thread(
                target=lambda: profiled.setdefault(
                    "run",
                    load.drive(server.url + url_path, body, args.connections, args.seconds + 3, workdir),
                )
            )
            driver.start()
            time.sleep(1)
            # Blocking sampling (py-spy's default): a non-blocking read races the running interpreter
            # and returns torn stacks under this load.
            subprocess.run(
                [spy, "record", "-p", str(worker.pid), "-d", str(args.seconds), "-r", str(args.rate),
                 "--threads", "--full-filenames", "-f", "raw", "-o", str(raw_path)],
                check=True,
                capture_output=True,
            )  # fmt: skip
            driver.join()
            text = raw_path.read_text()
    parts, leaves, elsewhere = parse_raw(text)
    busy = sum(parts.values())
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    saved = (
        RESULTS_DIR / f"profile-{args.server}-{args.endpoint.strip('/')}-{time.strftime('%Y%m%dT%H%M%S')}.raw"
    )
    saved.write_text(text)
    print(
        f"{args.server} {args.endpoint} ({rows} row{'s' if rows > 1 else ''}/request), 1 worker, "
        f"{args.connections} connections: {rate:,.0f} requests/s unprofiled, worker CPU {cpu_per_request_us:,.0f} µs "
        f"per request; {busy} samples of the event loop's thread over {args.seconds} s at {args.rate} Hz "
        f"({elsewhere} on other threads; profiled run {profiled['run'].count() / profiled['run'].duration_s:,.0f} "
        f"requests/s; the worker {'pinned to a core of its own' if pinned else 'sharing the cores with wrk'})\n"
    )
    print("| part | share of the worker's CPU | µs per request |\n|---|---:|---:|")
    for part, samples in parts.most_common():
        share = samples / busy
        print(f"| {part} | {share:.1%} | {share * cpu_per_request_us:,.0f} |")
    print("\nbusiest innermost frames:\n")
    for frame, samples in leaves.most_common(25):
        print(f"  {samples / busy:6.1%}  {frame.replace(str(REPO_ROOT) + '/', '')}")
    print(f"\nraw stacks: {saved.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
