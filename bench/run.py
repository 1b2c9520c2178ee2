"""Benchmark the service against a bare Starlette + uvicorn reference, in the same run (`make bench`).

    python -m bench.run [--duration 5] [--repeats 3] [--workers 2] [--connections 1 8 32]

Both servers run with the same number of workers, load the same model from the same BentoML store
and are driven by wrk on the same machine, one at a time, alternating round by round. Absolute
numbers depend on the machine (wrk shares its cores and the machine drifts), so the table reports
the median of each point's rounds and the median of the per-round service / reference ratios.
Prints a Markdown table and writes the raw numbers to bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from harness import containers, servers
from harness.paths import REPO_ROOT
from wdbc import BENIGN_EXAMPLE, MALIGNANT_EXAMPLE

RESULTS_DIR = REPO_ROOT / "bench" / "results"
BATCH_SIZES = (100, 1000)

# wrk reports through this hook, so nothing is parsed from its human-readable output.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = io.open("%(body)s", "rb")
wrk.body = file:read("*a")
file:close()

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    "WRK_RESULT {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"socket_errors\\": %%d, \\"non_2xx\\": %%d, " ..
    "\\"p50_us\\": %%d, \\"p90_us\\": %%d, \\"p99_us\\": %%d}\\n",
    summary.requests, summary.duration, errors.connect + errors.read + errors.write + errors.timeout,
    errors.status, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen[bytes] | None  # None for a container
    cold_start_s: float


@dataclass
class LoadResult:
    server: str
    endpoint: str
    connections: int
    rows_per_request: int
    requests_per_s: float
    rows_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    errors: int
    ratio: float | None = None  # service / reference: the median of the per-round ratios


def _commands(workers: int, port: int) -> dict[str, list[str]]:
    python = sys.executable
    return {
        "service": servers.bentoml_serve_command(port),
        "reference": [
            python,
            "-m",
            "uvicorn",
            "bench.reference_app:app",
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
        ],
    }


@contextmanager
def running(name: str, workers: int, log_dir: Path) -> Iterator[Server]:
    """Start a server, time process start to the first /readyz 200, stop it afterwards."""
    port = servers.free_port()
    env = {"SERVICE_WORKERS": str(workers)}  # logging as `make serve`
    server = servers.start(_commands(workers, port)[name], port, log_dir / f"{name}.log", env)
    with servers.serving(server) as ready:
        yield Server(name, ready.url, ready.process, time.monotonic() - ready.started_at)


@contextmanager
def running_container(image: str) -> Iterator[Server]:
    """The image, run exactly as the chart runs it (tests/container/runner.py), 1 CPU limit included."""
    engine = containers.detect_engine()
    container = containers.start(engine, image)
    try:
        yield Server("container", container.url, None, container.seconds_to_ready)
    finally:
        engine.run("rm", "--force", container.name, check=False)


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


def worker_memory_mb(server: Server) -> list[float]:
    """Resident memory of each worker process (the processes that load the model)."""
    children = psutil.Process(server.process.pid).children(recursive=True)
    workers = [child for child in children if "python" in child.name().lower()] or children
    return sorted(round(child.memory_info().rss / 2**20, 1) for child in workers)


def wrk(url: str, body: bytes, connections: int, duration: int, workdir: Path) -> dict:
    body_path = workdir / f"body-{len(body)}.json"
    body_path.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT % {"body": body_path})
    threads = min(2, connections)
    output = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    return json.loads(line.removeprefix("WRK_RESULT "))


def measure(
    server: Server, endpoint: str, body: bytes, rows: int, connections: int, duration: int, workdir: Path
) -> LoadResult:
    raw = wrk(server.url + endpoint, body, connections, duration, workdir)
    rate = raw["requests"] / (raw["duration_us"] / 1e6)
    return LoadResult(
        server=server.name,
        endpoint=endpoint,
        connections=connections,
        rows_per_request=rows,
        requests_per_s=round(rate, 1),
        rows_per_s=round(rate * rows, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        errors=raw["socket_errors"] + raw["non_2xx"],
    )


def batch_body(rows: int) -> bytes:
    examples = [MALIGNANT_EXAMPLE, BENIGN_EXAMPLE]
    return json.dumps({"instances": [examples[i % 2] for i in range(rows)]}).encode()


def markdown(results: list[LoadResult], servers: dict[str, dict]) -> str:
    lines = [
        "| endpoint | rows/request | connections | server | requests/s | rows/s | p50 ms | p90 ms | p99 ms | errors | service / reference |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else ""
        lines.append(
            f"| {r.endpoint} | {r.rows_per_request} | {r.connections} | {r.server} | {r.requests_per_s:,.0f} | "
            f"{r.rows_per_s:,.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | {ratio} |"
        )
    lines += [
        "",
        "| server | cold start (process start to /readyz 200) | resident memory per worker |",
        "|---|---:|---|",
    ]
    for name, info in servers.items():
        memory = ", ".join(f"{m:.0f} MB" for m in info["worker_memory_mb"]) or "n/a"
        lines.append(f"| {name} | {info['cold_start_s']:.2f} s | {memory} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per point; medians are reported")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers for both servers")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batch-connections", type=int, default=8)
    parser.add_argument("--no-container", action="store_true", help="skip the image even if one is built")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("make bench needs wrk, the load generator: sudo apt-get install wrk", file=sys.stderr)
        return 2

    single = json.dumps(MALIGNANT_EXAMPLE).encode()
    points = [("/predict", single, 1, connections) for connections in args.connections] + [
        ("/predict_batch", batch_body(rows), rows, args.batch_connections) for rows in BATCH_SIZES
    ]
    results: list[LoadResult] = []
    servers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        starts = {
            "reference": lambda: running("reference", args.workers, workdir),
            "service": lambda: running("service", args.workers, workdir),
        }
        if not args.no_container and (image := built_image()) is not None:
            starts["container"] = lambda: running_container(image)
        # Started one after another (each cold start alone on the machine), then all kept up: an idle
        # server costs nothing, and alternating them round by round spreads the machine's drift
        # evenly instead of handing it all to whichever was measured second.
        running_servers = {name: stack.enter_context(start()) for name, start in starts.items()}
        for server in running_servers.values():
            measure(server, "/predict", single, 1, 8, 2, workdir)  # warm-up
        for endpoint, body, rows, connections in points:
            rounds = [
                {
                    name: measure(server, endpoint, body, rows, connections, args.duration, workdir)
                    for name, server in running_servers.items()
                }
                for _ in range(args.repeats)
            ]
            ratio = statistics.median(
                r["service"].requests_per_s / r["reference"].requests_per_s for r in rounds
            )
            for name in running_servers:
                runs = sorted((r[name] for r in rounds), key=lambda result: result.requests_per_s)
                median_run = runs[len(runs) // 2]
                median_run.errors = sum(run.errors for run in runs)
                median_run.ratio = ratio if name == "service" else None
                results.append(median_run)
        for name, server in running_servers.items():
            memory = worker_memory_mb(server) if server.process is not None else []
            servers[name] = {"cold_start_s": round(server.cold_start_s, 2), "worker_memory_mb": memory}
    results.sort(key=lambda r: ["reference", "service", "container"].index(r.server))

    table = markdown(results, servers)
    print(
        f"workers per server: {args.workers} (the container: 1, the chart's CPU limit); "
        f"median of {args.repeats} alternating rounds of {args.duration} s per point; wrk on the same machine\n"
    )
    print(table)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "workers": args.workers,
                "duration_s": args.duration,
                "repeats": args.repeats,
                "servers": servers,
                "results": [asdict(r) for r in results],
            },
            indent=2,
        )
    )
    print(f"\nraw results: {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
