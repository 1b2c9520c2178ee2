# shellcheck shell=bash
# Sourced by the image scripts: picks the container engine and its settings.
# ENGINE=docker|podman overrides the choice. Docker wins when its daemon answers (GitHub runners,
# whose images also carry podman); otherwise podman, with the containers.conf these machines need
# (runc, cgroupfs, ulimits under the 20000 open-files hard limit) unless the caller set their own.
if [[ -z "${ENGINE:-}" ]]; then
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
        ENGINE=docker
    elif command -v podman >/dev/null; then
        ENGINE=podman
    else
        echo "no container engine found: install podman (or docker with a running daemon)" >&2
        exit 3
    fi
fi
if ! command -v "$ENGINE" >/dev/null; then
    echo "container engine $ENGINE not found" >&2
    exit 3
fi
if [[ "$ENGINE" == podman ]]; then
    export CONTAINERS_CONF="${CONTAINERS_CONF:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/containers.conf}"
fi
export ENGINE
