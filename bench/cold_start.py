"""Where a cold start's seconds go: every Python process of `bentoml serve`, on one timeline.

    python -m bench.cold_start [--workers 1] [--server service|hand-written|limit] [--runs 3]

The server starts on a copy of the model store with a sitecustomize module on PYTHONPATH, so that
every Python process it starts (the CLI that becomes the arbiter, the workers, any helper) reports,
to one shared file: when it was created, which program it runs, and when each watched module's
import began and ended. The server's own JSON log gives the moment the model was loaded; the first
/readyz 200 ends the timeline. Times are seconds since the first process was created.

The watched modules are the top-level packages worth knowing about and the service's own modules;
an import nested in another is shown nested (its time is part of its parent's). Imports that
happen before sitecustomize runs (the interpreter's own, site) are not seen; `python -X importtime`
gives the per-module detail of one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from bench.run import built_image, copy_store, running
from harness import containers

WATCHED = (
    "bento.service",
    "bento.drift",
    "bento.explain",
    "bento.schemas",
    "bento.scoring",
    "bento.guard",
    "bento.logs",
    "bento.metrics",
    "bento.pod",
    "wdbc",
    "bentoml",
    "bentoml.sklearn",
    "_bentoml_sdk",
    "_bentoml_impl",
    "_bentoml_impl.worker.service",
    "_bentoml_impl.server.app",
    "_bentoml_impl.loader",
    "numpy",
    "scipy",
    "scipy.special",
    "scipy.stats",
    "sklearn",
    "sklearn.pipeline",
    "sklearn.linear_model",
    "pandas",
    "pydantic",
    "fastapi",
    "starlette",
    "uvicorn",
    "circus",
    "opentelemetry",
    "opentelemetry.sdk",
    "prometheus_client",
    "loguru",
    "httpx",
    "aiohttp",
    "click",
    "rich",
    "fs",
    "attr",
    "cattrs",
    "jinja2",
    "yaml",
    "simple_di",
    "joblib",
    "cloudpickle",
)

# Runs in every Python process of the server (PYTHONPATH). Stdlib only, and cheap: it must not move
# what it measures. Each line: wall time, pid, parent pid, event.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys, time

    _TRACE = os.environ.get("COLD_START_TRACE")
    _WATCHED = frozenset(%(watched)r)


    def _emit(event):
        with open(_TRACE, "a") as trace:
            trace.write("%%.4f %%d %%d %%s\\n" %% (time.time(), os.getpid(), os.getppid(), event))


    def _created():
        # The process's creation: /proc/self/stat field 22, in clock ticks after boot, against the
        # uptime now (both to 10 ms; /proc/stat's boot time is whole seconds, too coarse).
        with open("/proc/self/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            now = float(uptime.read().split()[0])
        return time.time() - (now - ticks / os.sysconf("SC_CLK_TCK"))


    class _Watch:
        # A meta-path finder that finds nothing itself: it asks the others, then wraps the loader.
        def find_spec(self, name, path=None, target=None):
            if name not in _WATCHED:
                return None
            import importlib.util

            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return spec
            execute = spec.loader.exec_module

            def exec_module(module, execute=execute, name=name):
                _emit("begin " + name)
                try:
                    execute(module)
                finally:
                    _emit("end " + name)

            spec.loader.exec_module = exec_module
            return spec


    if _TRACE:
        with open("/proc/self/cmdline", "rb") as cmdline:
            _argv = cmdline.read().replace(b"\\0", b" ").decode(errors="replace").strip()
        with open(_TRACE, "a") as trace:
            trace.write("%%.4f %%d %%d created\\n" %% (_created(), os.getpid(), os.getppid()))
        _emit("program " + _argv[:300])
        sys.meta_path.insert(0, _Watch())
    """
)


def _model_loaded_at(log: str) -> dict[int, float]:
    """pid -> when the service logged its model as loaded (its JSON log lines carry time and pid)."""
    loaded = {}
    for line in log.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and str(entry.get("message", "")).startswith("loaded model"):
            loaded[int(entry["pid"])] = datetime.fromisoformat(entry["time"]).timestamp()
    return loaded


def _write_site(workdir: Path) -> Path:
    site = workdir / "site"
    site.mkdir(exist_ok=True)
    site.chmod(0o755)  # the container's user reads it through a bind mount
    module = site / "sitecustomize.py"
    module.write_text(SITECUSTOMIZE % {"watched": tuple(WATCHED)})
    module.chmod(0o644)
    return site


def trace_local(server: str, workers: int, workdir: Path) -> tuple[str, dict[str, float]]:
    """One cold start of a local server: its timeline as text, and the durations worth a median."""
    home = workdir / "bentoml"
    if not home.exists():
        copy_store(home)
    site = _write_site(workdir)
    trace = workdir / "trace.txt"
    trace.unlink(missing_ok=True)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    extra = {"COLD_START_TRACE": str(trace), "PYTHONPATH": path}
    with running(server, workers, home, workdir, extra_env=extra) as started:
        ready_at = time.time()
        time.sleep(0.5)  # let the trace's last lines land
        log = (workdir / f"{server}.log").read_text(errors="replace")
        return summarise(trace.read_text(), log, started.cold_start_s, ready_at, None)


def trace_container(image: str, workdir: Path) -> tuple[str, dict[str, float]]:
    """One cold start of the image, run as the chart runs it (harness/containers.py) plus a read-only
    bind mount of the sitecustomize module; the trace goes to the container's /tmp."""
    engine = containers.detect_engine()
    site = _write_site(workdir)
    trace_path = "/tmp/cold-start-trace.txt"
    env = {"COLD_START_TRACE": trace_path, "PYTHONPATH": "/opt/cold-start"}
    container = containers.start(engine, image, env, extra=["--volume", f"{site}:/opt/cold-start:ro"])
    ready_at = time.time()
    started = ready_at - container.seconds_to_ready
    try:
        time.sleep(0.5)  # let the trace's last lines land
        trace = engine.run("exec", container.name, "cat", trace_path).stdout
        log = engine.run("logs", container.name, check=False).stdout
    finally:
        engine.run("rm", "--force", container.name, check=False)
    return summarise(trace, log, container.seconds_to_ready, ready_at, started)


def summarise(
    trace: str, log: str, cold_start: float, ready_at: float, launched_at: float | None
) -> tuple[str, dict[str, float]]:
    events: dict[int, list[tuple[float, str]]] = defaultdict(list)
    parents: dict[int, int] = {}
    for line in trace.splitlines():
        stamp, pid, ppid, event = line.split(" ", 3)
        events[int(pid)].append((float(stamp), event))
        parents[int(pid)] = int(ppid)
    for pid, stamp in _model_loaded_at(log).items():
        events[pid].append((stamp, "model loaded (the service's log)"))
    origin = launched_at or min(stamp for pid_events in events.values() for stamp, _ in pid_events)
    lines = [f"cold start (start to /readyz 200, measured by the poller): {cold_start:.2f} s", ""]
    if launched_at is not None:
        lines.append("    0.000 s  `podman run` (or docker run) called\n")
    durations: dict[str, float] = {"cold start": cold_start}
    for pid in sorted(events, key=lambda p: min(s for s, _ in events[p])):
        pid_events = sorted(events[pid])
        program = next((e.removeprefix("program ") for _, e in pid_events if e.startswith("program ")), "?")
        role = _role(program)
        lines.append(f"process {pid} (parent {parents.get(pid, '?')}), {role}: {program[:160]}")
        # Each line at its start time; an import shows its duration and is indented under its parent.
        rows: list[tuple[float, int, str]] = []
        begins: list[tuple[str, float, int]] = []
        for stamp, event in pid_events:
            if event.startswith("program "):
                continue
            if event.startswith("begin "):
                begins.append((event[6:], stamp, len(rows)))
                rows.append((stamp, len(begins) - 1, ""))  # filled in at its end
                continue
            if event.startswith("end ") and begins:
                name, began, row = begins.pop()
                rows[row] = (began, len(begins), f"import {name}: {stamp - began:.3f} s")
                if not begins:
                    key = f"{role}: import {name}"
                    durations[key] = durations.get(key, 0) + stamp - began
                continue
            rows.append((stamp, 0, event))
            if event == "created":
                durations.setdefault(f"{role}: created at", stamp - origin)
            if event.startswith("model loaded"):
                durations.setdefault(f"{role}: model loaded at", stamp - origin)
        lines += [f"  {stamp - origin:7.3f} s  {'  ' * depth}{text}" for stamp, depth, text in rows if text]
        lines.append("")
    lines.append(f"  {ready_at - origin:7.3f} s  /readyz answered 200 (as the poller saw it)")
    return "\n".join(lines), durations


def _role(program: str) -> str:
    if "_bentoml_impl.worker" in program:
        return "worker"
    if "bentoml serve" in program or "-m bentoml" in program:
        return "arbiter (bentoml serve)"
    if "spawn_main" in program:
        return "worker"
    if "uvicorn" in program:
        return "uvicorn supervisor"
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--server", choices=["service", "hand-written", "limit", "container"], default="service"
    )
    parser.add_argument("--workers", type=int, default=1, help="1, as in the container at 1 CPU")
    parser.add_argument("--image", help="for --server container (default: the image `make image` built last)")
    parser.add_argument("--runs", type=int, default=3, help="cold starts; the last one's timeline is printed")
    args = parser.parse_args(argv)
    image = args.image or built_image() if args.server == "container" else None
    if args.server == "container" and image is None:
        raise SystemExit("no image: build one with `make image`, or pass --image")
    totals: dict[str, list[float]] = defaultdict(list)
    timeline = ""
    with tempfile.TemporaryDirectory(prefix="cold-start-") as tmp:
        for _ in range(args.runs):
            if image:
                timeline, durations = trace_container(image, Path(tmp))
            else:
                timeline, durations = trace_local(args.server, args.workers, Path(tmp))
            for key, value in durations.items():
                totals[key].append(value)
    print(timeline)
    print(
        f"\nmedians over {args.runs} cold starts (seconds; imports at the top level of each process, summed):\n"
    )
    for key, values in totals.items():
        print(f"  {statistics.median(values):6.2f}  {key}  ({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
