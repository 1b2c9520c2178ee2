"""State the service's workers share within one pod (one `bentoml serve`): a directory of small files.

BentoML runs each worker as its own process under one arbiter, so anything that must be seen pod-wide
(the drift window, the drain switch, which worker ran before) lives in files under
`$BENTOML_HOME/pod-<arbiter pid>/` (on the /tmp emptyDir in Kubernetes). Directories of arbiters
that no longer run are removed at start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger

from bento import config

# cgroup v2 counts the kernel's out-of-memory kills of this container's processes here.
MEMORY_EVENTS = Path("/sys/fs/cgroup/memory.events")
# How often a worker looks for the drain file: often enough to close keep-alive connections well
# within the preStop pause, rarely enough to cost nothing per request.
DRAIN_CHECK_SECONDS = 0.1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def replace_file(path: Path, text: str) -> None:
    """Write a shared file whole, so a worker reading it never sees half of another's write."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


def pod_directory(home: Path = config.BENTOML_HOME, arbiter_pid: int | None = None) -> Path:
    """This pod's shared directory, created on first use; stale ones of dead arbiters are removed."""
    arbiter_pid = arbiter_pid or os.getppid()
    directory = home / f"pod-{arbiter_pid}"
    if not directory.is_dir():
        for stale in home.glob("pod-*"):
            pid = stale.name.removeprefix("pod-")
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    return directory


class DrainSwitch:
    """True once the drain file exists (the chart's preStop hook creates it); checked at most every
    DRAIN_CHECK_SECONDS, so the per-request cost is a clock read."""

    def __init__(self, path: Path = config.DRAIN_FILE) -> None:
        self.path = path
        self._draining = False
        self._checked_at = 0.0

    def __bool__(self) -> bool:
        if self._draining:
            return True
        now = time.monotonic()
        if now - self._checked_at >= DRAIN_CHECK_SECONDS:
            self._checked_at = now
            if self.path.exists():
                self._draining = True
                logger.bind(drain_file=str(self.path)).info(
                    "draining: answering with Connection: close and /readyz 503 until SIGTERM"
                )
        return self._draining


def _oom_kills() -> int | None:
    try:
        for line in MEMORY_EVENTS.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


@dataclass
class WorkerRecord:
    """What a worker leaves behind for its successor: a replacement can say who it replaced and why."""

    directory: Path
    index: int

    @property
    def path(self) -> Path:
        return self.directory / f"worker-{self.index}.json"

    def started(self) -> None:
        """Log, as a WARNING, a predecessor that did not shut down cleanly; then record this worker."""
        try:
            previous = json.loads(self.path.read_text())
        except (OSError, ValueError):
            previous = None
        oom_kills = _oom_kills()
        if previous and not previous.get("stopped_cleanly") and previous.get("pid") != os.getpid():
            if (
                oom_kills is not None
                and previous.get("oom_kills") is not None
                and oom_kills > previous["oom_kills"]
            ):
                why = "the kernel killed it for running out of memory (cgroup oom_kill count went up)"
            else:
                why = (
                    "it ended without shutting down: killed by a signal, or it crashed (see the lines before)"
                )
            logger.bind(
                worker=self.index,
                previous_pid=previous.get("pid"),
                previous_started=previous.get("started"),
                pid=os.getpid(),
            ).warning("worker {} was replaced: {}", self.index, why)
        self._write(
            {"pid": os.getpid(), "started": time.time(), "stopped_cleanly": False, "oom_kills": oom_kills}
        )

    def stopped(self) -> None:
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if record.get("pid") == os.getpid():
            self._write({**record, "stopped_cleanly": True})

    def _write(self, record: dict) -> None:
        replace_file(self.path, json.dumps(record))
