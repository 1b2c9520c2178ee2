"""Benchmark the service against two bare apps in the same run (`make bench`).

    python -m bench.run [--duration 5] [--repeats 3] [--workers 2] [--connections 1 8 32] [--quick]

The servers, all with the same number of workers and the same model from one copy of the store:

- hand-written: bench/reference_app.py, the app users write (Starlette + uvicorn, the pipeline's
  predict_proba, the json module);
- limit: bench/limit_app.py, the same bare app with the fastest scoring we can build (one dot
  product, orjson): the ceiling for this model behind this HTTP stack;
- service: `bentoml serve`, logging as `make serve` does;
- container: the image `make image` built last, run as the chart runs it (1 CPU, so 1 worker).

Before anything is measured, every server must give the service's answers (fields, diagnoses,
probabilities) for rows spanning both diagnoses. wrk (bench/load.py, one clock per answer) then
drives single-row /predict at each --connections and /predict_batch with 100 and 1000 rows at
--batch-connections, the servers taking turns round by round in a rotating order, so the machine's
drift (it is shared, and wrk runs on the same cores) falls on all of them alike. The table gives each
point's median round and the medians of the per-round ratios service / hand-written and
service / limit: ratios from the same rounds are what carries from one machine to another.

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
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psutil

from bench import load
from harness import containers, servers
from harness.paths import REPO_ROOT
from wdbc import BENIGN_EXAMPLE, BENIGN_LABEL, FEATURE_NAMES, MALIGNANT_EXAMPLE, MALIGNANT_LABEL

RESULTS_DIR = REPO_ROOT / "bench" / "results"
BATCH_SIZES = (100, 1000)
HAND_WRITTEN, LIMIT, SERVICE, CONTAINER = "hand-written", "limit", "service", "container"
APPS = {HAND_WRITTEN: "bench.reference_app:app", LIMIT: "bench.limit_app:app"}
# Answers must agree this closely; the scorers differ only in floating-point rounding (~1e-16).
PROBABILITY_TOLERANCE = 1e-9
ANSWER_FIELDS = {"diagnosis", "probability_malignant", "threshold", "model_tag", "warnings"}

# The issue's targets, printed beside the numbers and never asserted: speed is measured, not tested.
TARGET_SINGLE_VS_HAND_WRITTEN = 1.0
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

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def worker_processes(self) -> list[psutil.Process]:
        """The processes that load the model and serve (uvicorn's spawned children, BentoML's worker
        processes), not the supervisors or multiprocessing's resource tracker."""
        markers = ("spawn_main", "_bentoml_impl.worker")
        return [p for p in self.processes()[1:] if any(m in " ".join(p.cmdline()) for m in markers)]

    def cpu_seconds(self) -> dict[int, float]:
        """User + system CPU time so far of every process of the server, by pid ({} for a container)."""
        if self.process is None:
            return {}
        seconds = {}
        for process in self.processes():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            seconds[process.pid] = times.user + times.system
        return seconds

    def worker_memory_mb(self) -> list[float]:
        """Resident memory of each worker."""
        if self.process is None:
            return []
        return sorted(round(p.memory_info().rss / 2**20, 1) for p in self.worker_processes())


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
    vs_hand_written: float | None = None  # median of the per-round ratios to the hand-written app
    vs_limit: float | None = None  # median of the per-round ratios to the limit (service only)


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


def _uvicorn(app: str, workers: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


@contextmanager
def running(
    name: str, workers: int, home: Path, log_dir: Path, extra_env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Start a server on its own port, time process start to the first /readyz 200, stop it after."""
    port = servers.free_port()
    command = servers.bentoml_serve_command(port) if name == SERVICE else _uvicorn(APPS[name], workers, port)
    # Logging as `make serve` (INFO, JSON to stdout); one store copy shared by all servers.
    env = {"SERVICE_WORKERS": str(workers), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    env.update(extra_env or {})
    server = servers.start(command, port, log_dir / f"{name}.log", env)
    with servers.serving(server) as ready:
        yield Server(name, ready.url, ready.process, time.monotonic() - ready.started_at, workers)


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


def batch_body(rows: int) -> bytes:
    examples = [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]
    return json.dumps({"instances": [examples[i % 2] for i in range(rows)]}).encode()


def probe_rows(count: int = 41) -> list[dict[str, float]]:
    """Rows from the benign example to the malignant one: both diagnoses and the threshold between."""
    return [
        {name: (1 - t) * BENIGN_EXAMPLE[name] + t * MALIGNANT_EXAMPLE[name] for name in FEATURE_NAMES}
        for t in (i / (count - 1) for i in range(count))
    ]


def check_answers(running_servers: dict[str, Server]) -> list[str]:
    """Problems with any server's answers compared with the service's; [] when they all agree."""
    rows = probe_rows()
    answers: dict[str, list[dict]] = {}
    with httpx.Client(timeout=30) as client:
        for name, server in running_servers.items():
            single = [client.post(f"{server.url}/predict", json=row) for row in rows[::4]]
            batch = client.post(f"{server.url}/predict_batch", json={"instances": rows})
            for response in [*single, batch]:
                response.raise_for_status()
            answers[name] = [r.json() for r in single] + batch.json()["predictions"]
    expected = answers[SERVICE]
    problems = []
    if {a["diagnosis"] for a in expected} != {MALIGNANT_LABEL, BENIGN_LABEL}:
        problems.append("the probe rows should span both diagnoses")
    for name, got in answers.items():
        for index, (answer, wanted) in enumerate(zip(got, expected, strict=True)):
            if set(answer) != ANSWER_FIELDS:
                problems.append(f"{name} answer {index} has fields {sorted(answer)}")
                break
            if name == CONTAINER and answer["model_tag"] != wanted["model_tag"]:
                # The image serves the model it was built with; only its fields can be compared.
                continue
            same = (
                answer["diagnosis"] == wanted["diagnosis"]
                and answer["model_tag"] == wanted["model_tag"]
                and answer["threshold"] == wanted["threshold"]
                and abs(answer["probability_malignant"] - wanted["probability_malignant"])
                <= PROBABILITY_TOLERANCE
            )
            if not same:
                problems.append(f"{name} answer {index} is {answer}, the service's {wanted}")
                break
    return problems


def measure(
    server: Server, endpoint: str, body: bytes, connections: int, duration: int, workdir: Path
) -> Measured:
    workers = {p.pid for p in server.worker_processes()} if server.process else set()
    before = server.cpu_seconds()
    run = load.drive(server.url + endpoint, body, connections, duration, workdir)
    used = {pid: seconds - before.get(pid, 0.0) for pid, seconds in server.cpu_seconds().items()}
    worker_total = sum(used.get(pid, 0.0) for pid in workers)
    split = sorted(round(used.get(pid, 0.0) / worker_total, 2) for pid in workers) if worker_total else []
    return Measured(run, sum(used.values()) if server.process else None, split)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def summarise(server: str, endpoint: str, rows: int, connections: int, rounds: list[Measured]) -> LoadResult:
    """The point's median round (by throughput), with errors summed over all its rounds."""
    median = sorted(rounds, key=lambda measured: measured.rate)[len(rounds) // 2]
    run, cpu, rate = median.run, median.cpu_s, median.rate
    accepted = run.accepted
    return LoadResult(
        server=server,
        endpoint=endpoint,
        connections=connections,
        rows_per_request=rows,
        requests_per_s=round(rate, 1),
        rows_per_s=round(rate * rows, 1),
        p50_ms=_ms(load.percentile(accepted, 50)),
        p90_ms=_ms(load.percentile(accepted, 90)),
        p99_ms=_ms(load.percentile(accepted, 99)),
        errors=sum(
            m.run.socket_errors + m.run.timeouts + m.run.count() - len(m.run.accepted) for m in rounds
        ),
        wrk_p99_ms=round(run.wrk_p99_ms, 3),
        server_cpu_us_per_request=None if cpu is None or not run.count() else round(cpu / run.count() * 1e6),
        generator_cores=round(run.generator_cores, 2),
        rounds_requests_per_s=[round(m.rate, 1) for m in rounds],
        worker_cpu_split=median.worker_split,
    )


def overload(
    server: Server, endpoint: str, body: bytes, rows: int, connections: int, duration: int, workdir: Path
) -> OverloadResult:
    run = load.drive(server.url + endpoint, body, connections, duration, workdir)
    accepted, shed = run.accepted, run.shed
    return OverloadResult(
        server=server.name,
        endpoint=endpoint,
        rows_per_request=rows,
        connections=connections,
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


def _find(
    results: list[LoadResult], server: str, endpoint: str, connections: int, rows: int
) -> LoadResult | None:
    for r in results:
        if (r.server, r.endpoint, r.connections, r.rows_per_request) == (server, endpoint, connections, rows):
            return r
    return None


def evaluate_targets(results: list[LoadResult], server_info: dict[str, dict]) -> list[dict]:
    """Each target of the issue with what this run measured and whether it was met (None: not measured)."""
    single = _find(results, SERVICE, "/predict", TARGET_CONNECTIONS, 1)
    batch = _find(results, SERVICE, "/predict_batch", TARGET_CONNECTIONS, TARGET_BATCH_ROWS)
    service_mb = max(server_info.get(SERVICE, {}).get("worker_memory_mb") or [0]) or None
    hand_mb = max(server_info.get(HAND_WRITTEN, {}).get("worker_memory_mb") or [0]) or None
    memory = service_mb / hand_mb - 1 if service_mb and hand_mb else None
    where = f"single-row /predict, {TARGET_CONNECTIONS} connections"
    batch_where = f"{TARGET_BATCH_ROWS}-row /predict_batch, {TARGET_CONNECTIONS} connections"
    ratio = "{:.2f}×".format
    # (target, goal, the measured value or None, how to show it, when it is met)
    rows: list[tuple[str, str, float | None, Callable[[float], str], Callable[[float], bool]]] = [
        (
            f"{where}: service / hand-written",
            f"≥ {TARGET_SINGLE_VS_HAND_WRITTEN:.1f}×",
            single and single.vs_hand_written,
            ratio,
            lambda v: v >= TARGET_SINGLE_VS_HAND_WRITTEN,
        ),
        (
            f"{where}: service / limit",
            f"≥ {TARGET_SINGLE_VS_LIMIT:.1f}×",
            single and single.vs_limit,
            ratio,
            lambda v: v >= TARGET_SINGLE_VS_LIMIT,
        ),
        (
            f"{where}: service p99",
            f"≤ {TARGET_SINGLE_P99_MS:.0f} ms",
            single and single.p99_ms,
            "{:.2f} ms".format,
            lambda v: v <= TARGET_SINGLE_P99_MS,
        ),
        (f"{where}: service errors", "0", single and single.errors, str, lambda v: v == 0),
        (
            f"{batch_where}: service rows/s",
            f"≥ {TARGET_BATCH_ROWS_PER_S:,}",
            batch and batch.rows_per_s,
            "{:,.0f}".format,
            lambda v: v >= TARGET_BATCH_ROWS_PER_S,
        ),
        (
            f"{batch_where}: service / hand-written",
            f"≥ {TARGET_BATCH_VS_HAND_WRITTEN:.1f}×",
            batch and batch.vs_hand_written,
            ratio,
            lambda v: v >= TARGET_BATCH_VS_HAND_WRITTEN,
        ),
        (
            "memory per worker (largest RSS): service over hand-written",
            f"≤ +{TARGET_MEMORY_OVER_HAND_WRITTEN:.0%}",
            memory,
            lambda v: f"{v:+.0%} ({service_mb:.0f} MB vs {hand_mb:.0f} MB)",
            lambda v: v <= TARGET_MEMORY_OVER_HAND_WRITTEN,
        ),
        (
            "container cold start (start to /readyz 200, 1 CPU)",
            f"≤ {TARGET_CONTAINER_COLD_START_S:.0f} s",
            server_info.get(CONTAINER, {}).get("cold_start_s"),
            "{:.2f} s".format,
            lambda v: v <= TARGET_CONTAINER_COLD_START_S,
        ),
    ]
    return [
        {
            "target": target,
            "goal": goal,
            "value": value,
            "measured": "not measured" if value is None else show(value),
            "met": None if value is None else bool(met(value)),
        }
        for target, goal, value, show, met in rows
    ]


def _num(value: float | None, spec: str = ".2f") -> str:
    return "" if value is None else format(value, spec)


def markdown(
    results: list[LoadResult],
    server_info: dict[str, dict],
    targets: list[dict],
    overloads: list[OverloadResult],
) -> str:
    lines = [
        "### Load",
        "",
        (
            "| endpoint | rows/request | connections | server | requests/s | rows/s | p50 ms | p90 ms | p99 ms "
            "| errors | server CPU µs/request | workers' CPU split % | ÷ hand-written | ÷ limit |"
        ),
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.endpoint} | {r.rows_per_request} | {r.connections} | {r.server} | {r.requests_per_s:,.0f} "
            f"| {r.rows_per_s:,.0f} | {_num(r.p50_ms)} | {_num(r.p90_ms)} | {_num(r.p99_ms)} | {r.errors} "
            f"| {_num(r.server_cpu_us_per_request, ',.0f')} | {'/'.join(f'{share:.0%}'[:-1] for share in r.worker_cpu_split)} "
            f"| {_num(r.vs_hand_written)} | {_num(r.vs_limit)} |"
        )
    lines += ["", "### Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {met} |")
    lines += [
        "",
        "### Servers",
        "",
        (
            "| server | workers | cold start (process start to /readyz 200), median | cold starts | "
            "resident memory per worker after the load |"
        ),
        "|---|---:|---:|---|---|",
    ]
    for name, info in server_info.items():
        memory = ", ".join(f"{m:.0f} MB" for m in info["worker_memory_mb"]) or "n/a"
        starts = ", ".join(f"{s:.2f}" for s in info["cold_starts_s"])
        lines.append(f"| {name} | {info['workers']} | {info['cold_start_s']:.2f} s | {starts} | {memory} |")
    if overloads:
        lines += [
            "",
            "### Overload",
            "",
            (
                "| server | endpoint | rows/request | connections | accepted/s | accepted rows/s "
                "| accepted p50 ms | accepted p99 ms | shed (503) | shed p50 ms | shed p99 ms | other non-2xx "
                "| socket errors | timeouts | wrk cores |"
            ),
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for o in overloads:
            others = ", ".join(f"{status}: {n}" for status, n in sorted(o.other_statuses.items())) or "0"
            lines.append(
                f"| {o.server} | {o.endpoint} | {o.rows_per_request} | {o.connections} | {o.accepted_per_s:,.0f} "
                f"| {o.accepted_rows_per_s:,.0f} | {_num(o.accepted_p50_ms)} | {_num(o.accepted_p99_ms)} "
                f"| {o.shed} | {_num(o.shed_p50_ms)} | {_num(o.shed_p99_ms)} | {others} | {o.socket_errors} "
                f"| {o.timeouts} | {_num(o.generator_cores)} |"
            )
    return "\n".join(lines)


def code_version() -> str:
    """The commit, `-dirty` with uncommitted changes, and a digest of the served code (bento/, wdbc/)
    as it is on disk: the numbers belong to this code, whatever state git is in."""
    described = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    digest = hashlib.sha256()
    for path in sorted([*REPO_ROOT.glob("bento/*.py"), *REPO_ROOT.glob("wdbc/*.py")]):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{described or 'unknown commit'}, service code {digest.hexdigest()[:12]}"


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every few seconds: the machine is shared, and a run made
    while something else was busy should say so."""

    def __init__(self, every: float = 5) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.every):
            self.samples.append(round(os.getloadavg()[0], 2))

    def stop(self) -> list[float]:
        self._stopped.set()
        self.join()
        return self.samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # wrk takes whole seconds.
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per point and cold starts per server")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for every server")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-connections", type=int, default=8)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("make bench needs wrk, the load generator: sudo apt-get install wrk", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    code = code_version()
    load_before = os.getloadavg()
    sampler = LoadSampler()
    sampler.start()
    single = json.dumps(MALIGNANT_EXAMPLE).encode()
    batches = {rows: batch_body(rows) for rows in BATCH_SIZES}
    points = [("/predict", single, 1, c) for c in args.connections] + [
        ("/predict_batch", batches[rows], rows, args.batch_connections) for rows in BATCH_SIZES
    ]
    results: list[LoadResult] = []
    overloads: list[OverloadResult] = []
    server_info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        home = copy_store(workdir / "bentoml")
        starts: dict[str, Callable] = {
            name: (lambda name=name: running(name, args.workers, home, workdir))
            for name in (HAND_WRITTEN, LIMIT, SERVICE)
        }
        if not args.no_container and (image := built_image()) is not None:
            starts[CONTAINER] = lambda: running_container(image)
        names = list(starts)
        # Cold starts: each server started alone, round after round; the last round's stay up for the
        # load (an idle server costs nothing, and the next one's start is then timed beside it).
        cold: dict[str, list[float]] = {name: [] for name in names}
        running_servers: dict[str, Server] = {}
        for round_index in range(args.repeats):
            for name in names:
                if round_index == args.repeats - 1:
                    server = running_servers[name] = stack.enter_context(starts[name]())
                else:
                    with starts[name]() as server:
                        pass
                cold[name].append(round(server.cold_start_s, 2))
        problems = check_answers(running_servers)
        if problems:
            print(
                "the servers answer differently; nothing measured:\n" + "\n".join(problems), file=sys.stderr
            )
            return 1
        warm_up = 1 if args.quick else 2
        for server in running_servers.values():  # first requests import and allocate lazily
            load.drive(server.url + "/predict", single, 8, warm_up, workdir)
            load.drive(server.url + "/predict_batch", batches[100], 2, 1, workdir)
        for endpoint, body, rows, connections in points:
            rounds: list[dict[str, Measured]] = []
            for round_index in range(args.repeats):
                # A rotating order: no server is always measured right after the same one.
                shift = round_index % len(names)
                order = names[shift:] + names[:shift]
                rounds.append(
                    {
                        name: measure(
                            running_servers[name], endpoint, body, connections, args.duration, workdir
                        )
                        for name in order
                    }
                )
            for name in names:
                result = summarise(name, endpoint, rows, connections, [r[name] for r in rounds])
                if name in (SERVICE, LIMIT):
                    ratios = [r[name].rate / r[HAND_WRITTEN].rate for r in rounds]
                    result.vs_hand_written = round(statistics.median(ratios), 3)
                if name == SERVICE:
                    result.vs_limit = round(
                        statistics.median(r[SERVICE].rate / r[LIMIT].rate for r in rounds), 3
                    )
                results.append(result)
        for name, server in running_servers.items():
            server_info[name] = {
                "workers": server.workers,
                "cold_start_s": round(statistics.median(cold[name]), 2),
                "cold_starts_s": cold[name],
                "worker_memory_mb": server.worker_memory_mb(),
            }
        if not args.no_overload:
            for endpoint, body, rows in (("/predict", single, 1), ("/predict_batch", batches[1000], 1000)):
                for name in (SERVICE, HAND_WRITTEN):
                    server = running_servers[name]
                    overloads.append(
                        overload(
                            server,
                            endpoint,
                            body,
                            rows,
                            args.overload_connections,
                            args.overload_duration,
                            workdir,
                        )
                    )
                    wait_until_idle(server, settle=0.2 if args.quick else 1)
    targets = evaluate_targets(results, server_info)
    load_after = os.getloadavg()
    during = sampler.stop()

    print(
        f"{started}, {code}, on {platform.node()} ({os.cpu_count()} CPUs; 1-minute load average {load_before[0]:.2f} "
        f"before, {statistics.median(during):.2f} median and {max(during):.2f} highest during, "
        f"{load_after[0]:.2f} after; the bench's own servers and wrk count in it); "
        f"{args.workers} workers per server (the container: 1, its 1-CPU limit); "
        f"median of {args.repeats} alternating rounds of {args.duration:g} s per point; wrk on the same cores, "
        f"so compare the ratios, not the absolute numbers. Overload: {args.overload_connections} connections "
        f"for {args.overload_duration:g} s, service MAX_CONCURRENCY {_max_concurrency()} per worker.\n"
    )
    print(markdown(results, server_info, targets, overloads))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "started": started,
                "code": code,
                "machine": {
                    "node": platform.node(),
                    "cpus": os.cpu_count(),
                    "load_average_before": load_before,
                    "load_average_after": load_after,
                    "load_average_1min_during": during,
                },
                "settings": {
                    "workers": args.workers,
                    "duration_s": args.duration,
                    "repeats": args.repeats,
                    "quick": args.quick,
                    "overload_connections": args.overload_connections,
                    "overload_duration_s": args.overload_duration,
                },
                "servers": server_info,
                "results": [asdict(r) for r in results],
                "targets": targets,
                "overload": [asdict(o) for o in overloads],
            },
            indent=2,
        )
    )
    shown = out.relative_to(REPO_ROOT) if out.is_relative_to(REPO_ROOT) else out
    print(f"\nraw results: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
