"""wrk with a per-response clock: every answer's status and latency, not wrk's own summary.

    run = drive("http://127.0.0.1:3000/predict", body, connections=8, duration=5, workdir=tmp)
    percentile(sorted(run.accepted), 50), run.shed, run.other_statuses, run.generator_cores

wrk's latency statistics are not enough here: they mix every status (a fast 503 lowers the
percentiles of an overloaded server) and wrk corrects them for coordinated omission, which inflates
the high percentiles after any stall by an amount that depends on the run, not on the server. So wrk
runs one thread per connection (one request in flight per Lua state), the Lua script stamps each
request as it is written and each answer as it is parsed with CLOCK_MONOTONIC through LuaJIT's ffi,
and the raw (status, latency) pairs are written to a file for Python to summarise.

wrk shares the machine's cores with the servers, so its own CPU time is measured (the exited child's
rusage) and reported beside the results.
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# A request unanswered this long is a timeout (BentoML's own request timeout is 10 s).
TIMEOUT_S = 10

_SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local clock = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, clock)
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local file = io.open("%(body)s", "rb")
local payload = file:read("*a")
file:close()

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  -- Formatted once per thread: request() hands wrk the same bytes every time.
  prepared = wrk.format("POST", nil, {%(headers)s}, payload)
  sent, answered, sent_at = 0, 0, 0
  latencies, statuses = {}, {}
end

-- One connection per thread, so request() and response() alternate: one clock per thread suffices.
function request()
  sent = sent + 1
  sent_at = now_us()
  return prepared
end

function response(status, headers, body)
  answered = answered + 1
  latencies[answered] = now_us() - sent_at
  statuses[answered] = status
end

function done(summary, latency, requests)
  local out = io.open("%(out)s", "w")
  local e = summary.errors
  out:write(string.format(
    '{"duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, "wrk_p99_us": %%d}\n',
    summary.duration, e.connect, e.read, e.write, latency:percentile(99)))
  for index, thread in ipairs(threads) do
    local lat, st = thread:get("latencies"), thread:get("statuses")
    -- A request still unanswered at the end: its age tells a timeout from one merely in flight.
    local sent, answered = thread:get("sent"), thread:get("answered")
    if index == 1 then
      sent = sent - 1  -- wrk calls the first thread's request() once to check the script, sending nothing
    end
    local age = sent > answered and now_us() - thread:get("sent_at") or 0
    out:write(string.format("sent %%d %%d %%d\n", sent, answered, math.floor(age)))
    for i = 1, #lat do
      out:write(st[i], " ", math.floor(lat[i]), "\n")
    end
  end
  out:close()
end
"""


@dataclass
class Run:
    """One wrk run: latencies (ms) of the answers by status, and what never got an answer."""

    duration_s: float
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)  # status -> sorted latencies
    socket_errors: int = 0  # connect, read and write errors (wrk reconnects after each)
    timeouts: int = 0  # answers slower than TIMEOUT_S, or none after that long
    unanswered: int = 0  # sent but never answered: lost to a socket error, or in flight at the end
    wrk_p99_ms: float = 0.0  # wrk's own p99: every status, corrected for coordinated omission
    generator_cpu_s: float = 0.0  # wrk's user + system CPU time

    def count(self) -> int:
        return sum(len(v) for v in self.latencies_ms.values())

    @property
    def accepted(self) -> list[float]:
        """Latencies of the 2xx answers, sorted."""
        return sorted(x for status, v in self.latencies_ms.items() if 200 <= status < 300 for x in v)

    @property
    def shed(self) -> list[float]:
        return self.latencies_ms.get(503, [])

    @property
    def other_statuses(self) -> dict[int, int]:
        """Non-2xx answers other than 503, by status."""
        return {s: len(v) for s, v in self.latencies_ms.items() if not (200 <= s < 300 or s == 503)}

    @property
    def generator_cores(self) -> float:
        return self.generator_cpu_s / self.duration_s


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None when there are no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def drive(
    url: str,
    body: bytes,
    connections: int,
    duration: float,
    workdir: Path,
    headers: dict[str, str] | None = None,
) -> Run:
    """POST `body` to `url` from `connections` keep-alive connections for `duration` seconds, with
    `headers` (ASCII) besides the JSON content type."""
    body_path = workdir / f"body-{len(body)}.json"
    if not body_path.exists():
        body_path.write_bytes(body)
    out = workdir / "wrk-answers.txt"
    out.unlink(missing_ok=True)
    script = workdir / "answers.lua"
    # JSON's string literals are Lua's too, for ASCII text.
    fields = {"Content-Type": "application/json", **(headers or {})}
    lua_headers = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in fields.items())
    script.write_text(_SCRIPT % {"body": body_path, "out": out, "headers": lua_headers})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    completed = subprocess.run(
        [
            "wrk",
            f"-t{connections}",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            f"{TIMEOUT_S}s",
            "-s",
            str(script),
            url,
        ],
        check=False,  # a failure is reported below, with wrk's own words
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout}{completed.stderr}")
    return _parse(out.read_text(), after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def _parse(text: str, cpu_s: float) -> Run:
    header, *lines = text.splitlines()
    summary = json.loads(header)
    run = Run(
        duration_s=summary["duration_us"] / 1e6,
        socket_errors=summary["connect"] + summary["read"] + summary["write"],
        wrk_p99_ms=summary["wrk_p99_us"] / 1000,
        generator_cpu_s=cpu_s,
    )
    for line in lines:
        first, second, *rest = line.split()
        if first == "sent":
            unanswered = int(second) - int(rest[0])
            if unanswered and int(rest[1]) > TIMEOUT_S * 1e6:
                run.timeouts += 1
                unanswered -= 1
            run.unanswered += unanswered
            continue
        latency_ms = int(second) / 1000
        if latency_ms > TIMEOUT_S * 1000:  # what wrk counts as a timeout: an answer, but too late
            run.timeouts += 1
            continue
        run.latencies_ms.setdefault(int(first), []).append(latency_ms)
    for values in run.latencies_ms.values():
        values.sort()
    return run
