"""Benchmark the service against bare apps in the same run (`make bench`).

    python -m bench.run [--duration 5] [--repeats 3] [--workers 2] [--connections 8] [--batch-rows 1000] [--quick]

The servers, all with the same number of workers and the same model, each from its own copy of the
store, every worker leading a session of its own (the kernel shares a busy machine's cores between
sessions; BentoML's workers have their own, the bare apps make theirs):

- hand-written: bench/reference_app.py, the app users write (Starlette + uvicorn, the pipeline's
  predict_proba, the json module), on uvicorn's httptools parser;
- hand-written h11: the same app on uvicorn's h11 parser, the one the service uses;
- limit: bench/limit_app.py, the same bare app with the fastest scoring we can build (one dot
  product, orjson) on httptools: the ceiling for this model behind this HTTP stack;
- service: `bentoml serve`, logging as `make serve` does;
- service + auth: the same with AUTH_ENABLED, keys from a local issuer, every request carrying a
  valid ServiceAccount token (single-row points only: its cost is per request);
- container: the image `make image` built last, run as the chart runs it (1 CPU, so 1 worker).

Before anything is measured, every server must give the service's answers (fields, diagnoses,
probabilities) for rows spanning both diagnoses, and the service + auth must refuse a request without
a token. wrk (bench/load.py, one clock per answer) then drives single-row /predict at each
--connections and /predict_batch at --batch-connections, the servers taking turns round by round in a
rotating order, so the machine's drift (it is shared, and wrk runs on the same cores) falls on all of
them alike. The Load table gives each point's median round; the Comparisons table gives the medians of
per-round ratios (throughput) and differences (server CPU per request) between pairs of servers:
ratios from the same rounds are what carries from one machine to another.

Cold start is process start to the first /readyz 200, each server started alone, once per round;
memory is each worker's resident set after the load. Last, the overload points: --overload-connections
against the service (which sheds past MAX_CONCURRENCY per worker with 503) and against the hand-written
app (which has no limit), accepted and shed answers reported apart.

Prints Markdown tables and writes the raw numbers to bench/results/<timestamp>.json (not committed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from bench import load
from harness import containers, servers
from harness.paths import REPO_ROOT
from tests.bento.issuer import running_issuer
from wdbc import BENIGN_EXAMPLE, BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_EXAMPLE, MALIGNANT_LABEL

RESULTS_DIR = REPO_ROOT / "bench" / "results"
HAND_WRITTEN, HAND_WRITTEN_H11, LIMIT = "hand-written", "hand-written h11", "limit"
SERVICE, SERVICE_AUTH, CONTAINER = "service", "service + auth", "container"
# The bare apps: (ASGI app, uvicorn's --http parser).
APPS = {
    HAND_WRITTEN: ("bench.reference_app:app", "httptools"),
    HAND_WRITTEN_H11: ("bench.reference_app:app", "h11"),
    LIMIT: ("bench.limit_app:app", "httptools"),
}
# (server, baseline): the pairs compared wherever both were measured.
COMPARISONS = [
    (SERVICE, HAND_WRITTEN),
    (SERVICE, HAND_WRITTEN_H11),
    (SERVICE, LIMIT),
    (HAND_WRITTEN_H11, HAND_WRITTEN),  # the parser's cost on the bare app
    (LIMIT, HAND_WRITTEN),
    (SERVICE_AUTH, SERVICE),  # authentication's cost
]
# The caller the authenticated service admits; its token lasts longer than any run.
CALLER_NAMESPACE, CALLER_NAME, TOKEN_LIFETIME_S = "bench", "client", 6 * 3600
# Answers must agree this closely; the scorers differ only in floating-point rounding (~1e-16).
PROBABILITY_TOLERANCE = 1e-9
ANSWER_FIELDS = {"diagnosis", "probability_malignant", "threshold", "model_tag", "warnings", "reason"}
SINGLE_ROW = json.dumps(MALIGNANT_EXAMPLE).encode()

# The project's speed targets, printed beside the numbers and never asserted: speed is measured, not tested.
TARGET_SINGLE_VS_HAND_WRITTEN = 0.9
TARGET_SINGLE_VS_LIMIT = 0.5
TARGET_SINGLE_P99_MS = 10.0
TARGET_BATCH_ROWS_PER_S = 200_000
TARGET_BATCH_VS_HAND_WRITTEN = 1.0
TARGET_MEMORY_OVER_HAND_WRITTEN = 0.20
TARGET_CONTAINER_COLD_START_S = 4.0
TARGET_CONNECTIONS, TARGET_BATCH_ROWS = 8, 1000


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None  # None for a container
    cold_start_s: float
    workers: int
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that load the model and serve (uvicorn's spawned children, BentoML's worker
        processes), not the supervisors or multiprocessing's resource tracker."""
        markers = ("spawn_main", "_bentoml_impl.worker")
        found = []
        for process in self.processes()[1:]:
            try:
                command = " ".join(process.cmdline())
            except psutil.Error:  # exited, or a zombie its parent has not reaped yet
                continue
            if any(m in command for m in markers):
                found.append(process)
        return found

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU time so far of every process of the server, by pid ({} for a container)."""
        if self.process is None:
            return {}
        seconds = {}
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            seconds[process.pid] = times.user + times.system
        return seconds

    def worker_memory_mb(self) -> list[float]:
        """Resident memory of each worker."""
        if self.process is None:
            return []
        sizes = []
        for process in self.worker_processes():
            try:
                sizes.append(round(process.memory_info().rss / 2**20, 1))
            except psutil.Error:
                continue
        return sorted(sizes)


@dataclass(frozen=True)
class Point:
    endpoint: str
    rows: int
    connections: int
    body: bytes
    servers: tuple[str, ...]


@dataclass
class Measured:
    run: load.Run
    cpu_s: float | None  # the server's CPU time during the run, all its processes (None: a container)
    # Each worker's share of the workers' CPU time: the kernel hands a shared socket's connections to
    # workers unevenly, and a point whose connections all went to one worker uses one core.
    worker_split: list[float]

    @property
    def rate(self) -> float:
        return self.run.count() / self.run.duration_s

    @property
    def cpu_us_per_request(self) -> float | None:
        return None if self.cpu_s is None else self.cpu_s / max(self.run.count(), 1) * 1e6


@dataclass
class LoadResult:
    server: str
    endpoint: str
    connections: int
    rows_per_request: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float | None  # latencies of the 2xx answers, as the client saw them (no correction)
    p90_ms: float | None
    p99_ms: float | None
    errors: int  # socket errors, non-2xx answers and timeouts, summed over the point's rounds
    wrk_p99_ms: float  # wrk's own p99, corrected for coordinated omission: kept for comparison only
    server_cpu_us_per_request: float | None  # the server's CPU time per answer (all its processes)
    generator_cores: float  # wrk's CPU use, on the same cores
    rounds_requests_per_s: list[float] = field(default_factory=list)
    worker_cpu_split: list[float] = field(default_factory=list)  # the median round's, see Measured


@dataclass
class Comparison:
    server: str
    baseline: str
    endpoint: str
    connections: int
    rows_per_request: int
    ratio: float  # median of the per-round throughput ratios server / baseline
    rounds_ratios: list[float]
    cpu_us_added: float  # median of the per-round differences in server CPU µs per request


@dataclass
class OverloadResult:
    server: str
    endpoint: str
    rows_per_request: int
    connections: int
    duration_s: float
    max_concurrency_per_worker: int | None
    accepted: int
    accepted_per_s: float
    accepted_rows_per_s: float
    accepted_p50_ms: float | None
    accepted_p99_ms: float | None
    shed: int  # 503 answers
    shed_p50_ms: float | None
    shed_p99_ms: float | None
    other_statuses: dict[int, int]  # non-2xx answers other than 503
    socket_errors: int
    timeouts: int
    unanswered: int  # lost to a socket error or still in flight when the run stopped
    generator_cores: float


@dataclass
class Measurements:
    code: str  # what was measured: see code_version
    results: list[LoadResult]
    comparisons: list[Comparison]
    servers: dict[str, dict]  # workers, cold starts and memory by server
    targets: list[dict]
    overload: list[OverloadResult]


@dataclass
class Bench:
    """What every measurement needs: the settings, a scratch directory, the machine's load average
    sampled at each wrk run (the machine is shared: a run made while something else was busy says so)."""

    args: argparse.Namespace
    workdir: Path
    load_samples: list[float] = field(default_factory=list)

    def drive(self, server: Server, endpoint: str, body: bytes, connections: int, duration: int) -> load.Run:
        self.load_samples.append(round(os.getloadavg()[0], 2))
        return load.drive(server.url + endpoint, body, connections, duration, self.workdir, server.headers)


def _uvicorn(app: str, http: str, workers: int, port: int) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(workers), "--http", http, "--loop", "uvloop", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip


@contextmanager
def running(
    name: str,
    workers: int,
    workdir: Path,
    env: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Iterator[Server]:
    """Start a server on its own port and its own copy of the store, time process start to the first
    /readyz 200, stop it after. `env` is for the service: settings beside the harness's."""
    home = workdir / re.sub(r"[^a-z0-9]+", "-", name) / "bentoml"
    if not home.exists():
        copy_store(home)
    log = workdir / f"{name}.log"
    if name in APPS:
        port = servers.free_port()
        settings = {"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
        started = servers.start(_uvicorn(*APPS[name], workers, port), port, log, settings)
    else:  # logging as `make serve` (INFO, JSON to stdout)
        started = servers.start_service(home, log, SERVICE_WORKERS=str(workers), **(env or {}))
    with servers.serving(started) as ready:
        yield Server(
            name, ready.url, ready.process, time.monotonic() - ready.started_at, workers, headers or {}
        )


@contextmanager
def running_container(image: str) -> Iterator[Server]:
    """The image run as the chart runs it (harness/containers.py): 1 CPU limit, so 1 worker."""
    engine = containers.detect_engine()
    started = containers.start(engine, image)
    try:
        yield Server(CONTAINER, started.url, None, started.seconds_to_ready, 1)
    finally:
        engine.run("rm", "--force", started.name, check=False)


def built_image() -> str | None:
    """The image `make image` recorded last, if a container engine can still see it."""
    image = containers.read_image_record().get("IMAGE")
    if image is None:
        return None
    try:
        containers.detect_engine().run("image", "inspect", image)
    except Exception:  # noqa: BLE001 (no engine, or the image was removed)
        return None
    return image


def copy_store(destination: Path) -> Path:
    """A private copy of the model store: BentoML empties its home's metrics directory at every start
    (a running `make serve` would lose its /metrics) and the service keeps per-pod state there."""
    source = Path(os.environ.get("BENTOML_HOME") or REPO_ROOT / ".bentoml")
    if not (source / "models").is_dir():
        raise SystemExit(f"no model store at {source}: train a model first (make model)")
    shutil.copytree(source / "models", destination / "models")
    return destination


def server_starts(args: argparse.Namespace, workdir: Path, stack: ExitStack) -> dict[str, Callable]:
    """How to start each server, by name, in the order they are measured."""
    issuer = stack.enter_context(running_issuer())
    token = issuer.token(CALLER_NAMESPACE, CALLER_NAME, lifetime=TOKEN_LIFETIME_S)
    auth = issuer.settings(
        str(workdir / "no-credentials"), AUTH_ALLOW_DIAGNOSIS=f"{CALLER_NAMESPACE}/{CALLER_NAME}"
    )
    starts: dict[str, Callable] = {
        name: (lambda name=name: running(name, args.workers, workdir)) for name in [*APPS, SERVICE]
    }
    starts[SERVICE_AUTH] = lambda: running(
        SERVICE_AUTH, args.workers, workdir, auth, {"Authorization": f"Bearer {token}"}
    )
    if not args.no_container and (image := built_image()) is not None:
        starts[CONTAINER] = lambda: running_container(image)
    return starts


def start_all(
    starts: dict[str, Callable[[], AbstractContextManager[Server]]], repeats: int, stack: ExitStack
) -> tuple[dict[str, Server], dict[str, list[float]]]:
    """Cold starts: each server started alone, round after round; the last round's stay up for the
    load (an idle server costs nothing, and the next one's start is then timed beside it)."""
    cold: dict[str, list[float]] = {name: [] for name in starts}
    running_servers: dict[str, Server] = {}
    for round_index in range(repeats):
        for name, start in starts.items():
            if round_index == repeats - 1:
                server = running_servers[name] = stack.enter_context(start())
            else:
                with start() as server:
                    pass
            cold[name].append(round(server.cold_start_s, 2))
    return running_servers, cold


def batch_body(rows: int) -> bytes:
    examples = [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]
    return json.dumps({"instances": [examples[i % 2] for i in range(rows)]}).encode()


def probe_rows(count: int = 41) -> list[dict[str, float]]:
    """Rows from the benign example to the malignant one: both diagnoses and the threshold between."""
    return [
        {name: (1 - t) * BENIGN_EXAMPLE[name] + t * MALIGNANT_EXAMPLE[name] for name in FEATURE_NAMES}
        for t in (i / (count - 1) for i in range(count))
    ]


def _agrees(answer: dict, wanted: dict) -> bool:
    return (
        answer["diagnosis"] == wanted["diagnosis"]
        and answer["model_tag"] == wanted["model_tag"]
        and answer["threshold"] == wanted["threshold"]
        and abs(answer["probability_malignant"] - wanted["probability_malignant"]) <= PROBABILITY_TOLERANCE
    )


def check_answers(running_servers: dict[str, Server]) -> list[str]:
    """Problems with any server's answers compared with the service's; [] when they all agree."""
    rows = probe_rows()
    answers: dict[str, list[dict]] = {}
    problems = []
    with httpx.Client(timeout=30) as client:
        for name, server in running_servers.items():
            single = [
                client.post(f"{server.url}/predict", json=row, headers=server.headers) for row in rows[::4]
            ]
            batch = client.post(
                f"{server.url}/predict_batch", json={"instances": rows}, headers=server.headers
            )
            for response in [*single, batch]:
                response.raise_for_status()
            answers[name] = [r.json() for r in single] + batch.json()["predictions"]
            if (
                server.headers
                and (status := client.post(f"{server.url}/predict", json=rows[0]).status_code) != 401
            ):
                problems.append(f"{name} answered {status} to a request without its headers, not 401")
    expected = answers[SERVICE]
    if {a["diagnosis"] for a in expected} != {MALIGNANT_LABEL, BENIGN_LABEL}:
        problems.append("the probe rows should span both diagnoses")
    for name, got in answers.items():
        for index, (answer, wanted) in enumerate(zip(got, expected, strict=True)):
            if set(answer) != ANSWER_FIELDS:
                problems.append(f"{name} answer {index} has fields {sorted(answer)}")
                break
            # The image serves the model it was built with; only its fields can be compared then.
            if not _agrees(answer, wanted) and not (
                name == CONTAINER and answer["model_tag"] != wanted["model_tag"]
            ):
                problems.append(f"{name} answer {index} is {answer}, the service's {wanted}")
                break
    return problems


def check_sessions(running_servers: dict[str, Server]) -> list[str]:
    """Workers not leading a session of their own, as BentoML's do (see bench/reference_app.py): the
    kernel shares a busy machine's cores between sessions, so workers placed otherwise fare otherwise."""
    problems = []
    for server in running_servers.values():
        for worker in server.worker_processes() if server.process else []:
            try:
                session = os.getsid(worker.pid)
            except ProcessLookupError:  # exited since it was listed
                continue
            if session != worker.pid:
                problems.append(f"{server.name} worker {worker.pid} shares its session")
    return problems


def measure(bench: Bench, server: Server, point: Point) -> Measured:
    workers = {p.pid for p in server.worker_processes()} if server.process else set()
    before = server.cpu_seconds()
    run = bench.drive(server, point.endpoint, point.body, point.connections, bench.args.duration)
    used = {pid: seconds - before.get(pid, 0.0) for pid, seconds in server.cpu_seconds().items()}
    worker_total = sum(used.get(pid, 0.0) for pid in workers)
    split = sorted(round(used.get(pid, 0.0) / worker_total, 2) for pid in workers) if worker_total else []
    return Measured(run, sum(used.values()) if server.process else None, split)


def measure_rounds(
    bench: Bench, running_servers: dict[str, Server], point: Point
) -> list[dict[str, Measured]]:
    """--repeats rounds, each server once per round, in an order that rotates from round to round so
    that no server is always measured right after the same one."""
    rounds = []
    for round_index in range(bench.args.repeats):
        shift = round_index % len(point.servers)
        order = point.servers[shift:] + point.servers[:shift]
        rounds.append({name: measure(bench, running_servers[name], point) for name in order})
    return rounds


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarise(server: str, point: Point, rounds: list[Measured]) -> LoadResult:
    """The point's median round (by throughput), with errors summed over all its rounds."""
    median = sorted(rounds, key=lambda measured: measured.rate)[len(rounds) // 2]
    run, cpu_us, rate = median.run, median.cpu_us_per_request, median.rate
    return LoadResult(
        server=server,
        endpoint=point.endpoint,
        connections=point.connections,
        rows_per_request=point.rows,
        requests_per_s=round(rate, 1),
        rows_per_s=round(rate * point.rows, 1),
        p50_ms=_ms(load.percentile(run.accepted, 50)),
        p90_ms=_ms(load.percentile(run.accepted, 90)),
        p99_ms=_ms(load.percentile(run.accepted, 99)),
        errors=sum(
            m.run.socket_errors + m.run.timeouts + m.run.count() - len(m.run.accepted) for m in rounds
        ),
        wrk_p99_ms=round(run.wrk_p99_ms, 3),
        server_cpu_us_per_request=None if cpu_us is None else round(cpu_us),
        generator_cores=round(run.generator_cores, 2),
        rounds_requests_per_s=[round(m.rate, 1) for m in rounds],
        worker_cpu_split=median.worker_split,
    )


def compare(point: Point, rounds: list[dict[str, Measured]]) -> list[Comparison]:
    """Each pair of COMPARISONS measured at this point: within a round both ran minutes apart at most,
    so the ratio cancels most of the machine's drift, and the median drops a round gone wrong."""
    found = []
    for server, baseline in COMPARISONS:
        if server not in point.servers or baseline not in point.servers:
            continue
        ratios = [round(r[server].rate / r[baseline].rate, 3) for r in rounds]
        # Servers compared are local processes, so their CPU time is known.
        added = statistics.median(
            r[server].cpu_us_per_request - r[baseline].cpu_us_per_request for r in rounds
        )
        where = (point.endpoint, point.connections, point.rows)
        found.append(Comparison(server, baseline, *where, statistics.median(ratios), ratios, round(added)))
    return found


def overload(bench: Bench, server: Server, endpoint: str, body: bytes, rows: int) -> OverloadResult:
    run = bench.drive(server, endpoint, body, bench.args.overload_connections, bench.args.overload_duration)
    accepted, shed = run.accepted, run.shed
    return OverloadResult(
        server=server.name,
        endpoint=endpoint,
        rows_per_request=rows,
        connections=bench.args.overload_connections,
        duration_s=round(run.duration_s, 2),
        max_concurrency_per_worker=_max_concurrency() if server.name == SERVICE else None,
        accepted=len(accepted),
        accepted_per_s=round(len(accepted) / run.duration_s, 1),
        accepted_rows_per_s=round(len(accepted) * rows / run.duration_s, 1),
        accepted_p50_ms=_ms(load.percentile(accepted, 50)),
        accepted_p99_ms=_ms(load.percentile(accepted, 99)),
        shed=len(shed),
        shed_p50_ms=_ms(load.percentile(shed, 50)),
        shed_p99_ms=_ms(load.percentile(shed, 99)),
        other_statuses=run.other_statuses,
        socket_errors=run.socket_errors,
        timeouts=run.timeouts,
        unanswered=run.unanswered,
        generator_cores=round(run.generator_cores, 2),
    )


def overloads(bench: Bench, running_servers: dict[str, Server]) -> list[OverloadResult]:
    """The service and the hand-written app under --overload-connections, single rows then batches."""
    found = []
    for endpoint, body, rows in (
        ("/predict", SINGLE_ROW, 1),
        ("/predict_batch", batch_body(TARGET_BATCH_ROWS), TARGET_BATCH_ROWS),
    ):
        for name in (SERVICE, HAND_WRITTEN):
            found.append(overload(bench, running_servers[name], endpoint, body, rows))
            wait_until_idle(running_servers[name], settle=0.2 if bench.args.quick else 1)
    return found


def _max_concurrency() -> int:
    """What the service reads from this environment (the benchmark passes its environment on)."""
    from bento import config

    return config.MAX_CONCURRENCY


def wait_until_idle(server: Server, settle: float, timeout: float = 30) -> None:
    """After an overload run the server still works through what it accepted; let it finish."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    time.sleep(settle)


def _result(results: list[LoadResult], endpoint: str, rows: int) -> LoadResult | None:
    """The service's result at the targets' connections."""
    wanted = (SERVICE, endpoint, TARGET_CONNECTIONS, rows)
    return next(
        (r for r in results if (r.server, r.endpoint, r.connections, r.rows_per_request) == wanted), None
    )


def _ratio(comparisons: list[Comparison], endpoint: str, rows: int, baseline: str) -> float | None:
    """The service's throughput ratio to `baseline` at the targets' connections."""
    wanted = (SERVICE, baseline, endpoint, TARGET_CONNECTIONS, rows)
    found = (
        c.ratio
        for c in comparisons
        if (c.server, c.baseline, c.endpoint, c.connections, c.rows_per_request) == wanted
    )
    return next(found, None)


def _target(name: str, value: float | None, op: str, bound: float, fmt: str, note: str = "") -> dict:
    met = None if value is None else value >= bound if op == "≥" else value <= bound
    measured = "not measured" if value is None else fmt.format(value) + note
    return {
        "target": name,
        "goal": f"{op} {fmt.format(bound)}",
        "value": value,
        "measured": measured,
        "met": met,
    }


def evaluate_targets(
    results: list[LoadResult], comparisons: list[Comparison], server_info: dict[str, dict]
) -> list[dict]:
    """Each speed target with what this run measured and whether it was met (None: not measured)."""
    single, batch = _result(results, "/predict", 1), _result(results, "/predict_batch", TARGET_BATCH_ROWS)
    vs_hand, vs_limit = (_ratio(comparisons, "/predict", 1, baseline) for baseline in (HAND_WRITTEN, LIMIT))
    batch_vs_hand = _ratio(comparisons, "/predict_batch", TARGET_BATCH_ROWS, HAND_WRITTEN)
    mb = {
        name: max(server_info.get(name, {}).get("worker_memory_mb") or [0])
        for name in (SERVICE, HAND_WRITTEN)
    }
    memory = mb[SERVICE] / mb[HAND_WRITTEN] - 1 if mb[SERVICE] and mb[HAND_WRITTEN] else None
    memory_note = f" ({mb[SERVICE]:.0f} MB vs {mb[HAND_WRITTEN]:.0f} MB)"
    cold = server_info.get(CONTAINER, {}).get("cold_start_s")
    where = f"single-row /predict, {TARGET_CONNECTIONS} connections: service"
    batch_where = f"{TARGET_BATCH_ROWS}-row /predict_batch, {TARGET_CONNECTIONS} connections: service"
    return [
        _target(f"{where} / hand-written", vs_hand, "≥", TARGET_SINGLE_VS_HAND_WRITTEN, "{:.2f}×"),
        _target(f"{where} / limit", vs_limit, "≥", TARGET_SINGLE_VS_LIMIT, "{:.2f}×"),
        _target(f"{where} p99", single and single.p99_ms, "≤", TARGET_SINGLE_P99_MS, "{:.2f} ms"),
        _target(f"{where} errors", single and single.errors, "≤", 0, "{:d}"),
        _target(f"{batch_where} rows/s", batch and batch.rows_per_s, "≥", TARGET_BATCH_ROWS_PER_S, "{:,.0f}"),
        _target(f"{batch_where} / hand-written", batch_vs_hand, "≥", TARGET_BATCH_VS_HAND_WRITTEN, "{:.2f}×"),
        _target(
            "memory per worker (largest RSS): service over hand-written",
            memory,
            "≤",
            TARGET_MEMORY_OVER_HAND_WRITTEN,
            "{:+.0%}",
            memory_note,
        ),
        _target(
            "container cold start (start to /readyz 200, 1 CPU)",
            cold,
            "≤",
            TARGET_CONTAINER_COLD_START_S,
            "{:.2f} s",
        ),
    ]


def _num(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


# Table columns; a name ending with ":" is a right-aligned column.
POINT_COLUMNS = ["endpoint", "rows/request:", "connections:", "server"]
LOAD_COLUMNS = [
    "requests/s:",
    "rows/s:",
    "p50 ms:",
    "p90 ms:",
    "p99 ms:",
    "errors:",
    "server CPU µs/request:",
]
LOAD_COLUMNS += ["workers' CPU split %:"]
COMPARISON_COLUMNS = [
    "against",
    "throughput ratio (median round):",
    "each round:",
    "server CPU µs/request added:",
]
SERVER_COLUMNS = ["server", "workers:", "cold start (process start to /readyz 200), median:", "cold starts"]
SERVER_COLUMNS += ["resident memory per worker after the load"]
OVERLOAD_COLUMNS = ["server", "endpoint", "rows/request:", "connections:", "accepted/s:", "accepted rows/s:"]
OVERLOAD_COLUMNS += ["accepted p50 ms:", "accepted p99 ms:", "shed (503):", "shed p50 ms:", "shed p99 ms:"]
OVERLOAD_COLUMNS += ["other non-2xx", "socket errors:", "timeouts:", "wrk cores:"]
MET = {True: "yes", False: "**no**", None: "n/a"}


def _table(title: str, columns: list[str], rows: list[list]) -> str:
    return "\n".join(
        [
            f"### {title}\n",
            "| " + " | ".join(c.removesuffix(":") for c in columns) + " |",
            "|" + "|".join("---:" if c.endswith(":") else "---" for c in columns) + "|",
            *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows),
        ]
    )


def _point(r: LoadResult | Comparison) -> list:
    return [r.endpoint, r.rows_per_request, r.connections, r.server]


def _load_row(r: LoadResult) -> list:
    split = "/".join(f"{share:.0%}"[:-1] for share in r.worker_cpu_split)
    rates = [f"{r.requests_per_s:,.0f}", f"{r.rows_per_s:,.0f}"]
    latencies = [_num(r.p50_ms), _num(r.p90_ms), _num(r.p99_ms)]
    return [*_point(r), *rates, *latencies, r.errors, _num(r.server_cpu_us_per_request, ",.0f"), split]


def _comparison_row(c: Comparison) -> list:
    rounds = " ".join(f"{ratio:.2f}" for ratio in c.rounds_ratios)
    return [*_point(c), c.baseline, f"{c.ratio:.2f}", rounds, _num(c.cpu_us_added, "+,.0f")]


def _server_row(name: str, info: dict) -> list:
    starts = ", ".join(f"{s:.2f}" for s in info["cold_starts_s"])
    memory = ", ".join(f"{mb:.0f} MB" for mb in info["worker_memory_mb"]) or "n/a"
    return [name, info["workers"], f"{info['cold_start_s']:.2f} s", starts, memory]


def _overload_row(o: OverloadResult) -> list:
    others = ", ".join(f"{status}: {n}" for status, n in sorted(o.other_statuses.items())) or "0"
    accepted = [f"{o.accepted_per_s:,.0f}", f"{o.accepted_rows_per_s:,.0f}"]
    accepted += [_num(o.accepted_p50_ms), _num(o.accepted_p99_ms)]
    shed = [o.shed, _num(o.shed_p50_ms), _num(o.shed_p99_ms)]
    point = [o.server, o.endpoint, o.rows_per_request, o.connections]
    return [*point, *accepted, *shed, others, o.socket_errors, o.timeouts, _num(o.generator_cores)]


def markdown(m: Measurements) -> str:
    tables = [
        _table("Load", POINT_COLUMNS + LOAD_COLUMNS, [_load_row(r) for r in m.results]),
        _table(
            "Comparisons", POINT_COLUMNS + COMPARISON_COLUMNS, [_comparison_row(c) for c in m.comparisons]
        ),
        _table(
            "Targets",
            ["target", "goal", "measured", "met"],
            [[t["target"], t["goal"], t["measured"], MET[t["met"]]] for t in m.targets],
        ),
        _table("Servers", SERVER_COLUMNS, [_server_row(name, info) for name, info in m.servers.items()]),
    ]
    if m.overload:
        tables.append(_table("Overload", OVERLOAD_COLUMNS, [_overload_row(o) for o in m.overload]))
    return "\n\n".join(tables)


def code_version() -> str:
    """The commit, `-dirty` with uncommitted changes, and a digest of the served code (bento/,
    kubeauth/, wdbc/) as it is on disk: the numbers belong to this code, whatever state git is in."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted(
        path for folder in ("bento", "kubeauth", "wdbc") for path in REPO_ROOT.glob(f"{folder}/*.py")
    ):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{described or 'unknown commit'}, service code {digest.hexdigest()[:12]}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # wrk takes whole seconds.
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per point and cold starts per server")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for every server")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=[TARGET_CONNECTIONS], help="single-row points"
    )
    parser.add_argument("--batch-rows", type=int, nargs="+", default=[TARGET_BATCH_ROWS], help="batch points")
    parser.add_argument("--batch-connections", type=int, default=TARGET_CONNECTIONS)
    parser.add_argument("--overload-connections", type=int, default=256)
    parser.add_argument("--overload-duration", type=int, default=15)
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument("--no-container", action="store_true", help="skip the image even if one is built")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run for the tests: 1 s runs, 1 round, 8 connections, no container",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.repeats, args.connections, args.overload_duration = 1, 1, [8], 1
        args.no_container = True
    return args


def plan(args: argparse.Namespace, names: list[str]) -> list[Point]:
    """Single rows at each --connections, every server; batches at each --batch-rows, every server but
    the authenticated service (its cost is per request, a thousandth of a batch's)."""
    batch_servers = tuple(name for name in names if name != SERVICE_AUTH)
    return [Point("/predict", 1, c, SINGLE_ROW, tuple(names)) for c in args.connections] + [
        Point("/predict_batch", rows, args.batch_connections, batch_body(rows), batch_servers)
        for rows in args.batch_rows
    ]


def report(bench: Bench, started: str, m: Measurements) -> None:
    """Print the tables under a line saying where and how they were measured; write the raw JSON."""
    args, during = bench.args, bench.load_samples or [os.getloadavg()[0]]
    print(
        f"{started}, {m.code}, on {platform.node()} ({os.cpu_count()} CPUs; 1-minute load average "
        f"{statistics.median(during):.2f} median and {max(during):.2f} highest at the wrk runs, the bench's "
        f"own servers and wrk counting in it); {args.workers} workers per server (the container: 1, its "
        f"1-CPU limit); median of {args.repeats} rotating rounds of {args.duration:g} s per point; wrk on "
        f"the same cores, so compare the ratios, not the absolute numbers. Overload: "
        f"{args.overload_connections} connections for {args.overload_duration:g} s, service "
        f"MAX_CONCURRENCY {_max_concurrency()} per worker.\n"
    )
    print(markdown(m))
    settings = ("workers", "duration", "repeats", "quick", "overload_connections", "overload_duration")
    raw = {
        "started": started,
        "machine": {"node": platform.node(), "cpus": os.cpu_count(), "load_average_1min": bench.load_samples},
        "settings": {key: getattr(args, key) for key in settings},
        **asdict(m),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(raw, indent=2))
    print(f"\nraw results: {out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out}")


def server_info(server: Server, cold_starts: list[float]) -> dict:
    return {
        "workers": server.workers,
        "cold_start_s": round(statistics.median(cold_starts), 2),
        "cold_starts_s": cold_starts,
        "worker_memory_mb": server.worker_memory_mb(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("make bench needs wrk, the load generator: sudo apt-get install wrk", file=sys.stderr)
        return 2
    started, code = time.strftime("%Y-%m-%dT%H:%M:%S%z"), code_version()
    results, comparisons, overload_results = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        bench = Bench(args, Path(tmp))
        running_servers, cold = start_all(server_starts(args, bench.workdir, stack), args.repeats, stack)
        if problems := check_answers(running_servers) + check_sessions(running_servers):
            print("the servers differ; nothing measured:\n" + "\n".join(problems), file=sys.stderr)
            return 1
        for server in running_servers.values():  # first requests import and allocate lazily
            bench.drive(server, "/predict", SINGLE_ROW, 8, 1 if args.quick else 2)
            bench.drive(server, "/predict_batch", batch_body(100), 2, 1)
        for point in plan(args, list(running_servers)):
            rounds = measure_rounds(bench, running_servers, point)
            results += [summarise(name, point, [r[name] for r in rounds]) for name in point.servers]
            comparisons += compare(point, rounds)
        info = {name: server_info(server, cold[name]) for name, server in running_servers.items()}
        if not args.no_overload:
            overload_results = overloads(bench, running_servers)
    targets = evaluate_targets(results, comparisons, info)
    report(bench, started, Measurements(code, results, comparisons, info, targets, overload_results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
