#!/usr/bin/env bash
# Times container start to the first /readyz 200, the way tests/container runs the image (read-only
# root filesystem, tmpfs at the contract's writable paths, its uid/gid, no capabilities, 1 CPU).
#
#   bash scripts/time-image-start.sh [IMAGE] [RUNS]   (default breast-cancer-classifier:latest, 3)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/container-engine.sh
source scripts/container-engine.sh

image="${1:-breast-cancer-classifier:latest}"
runs="${2:-3}"
python=.venv/bin/python
port=$($python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
contract() { $python -c "import yaml; print(yaml.safe_load(open('k8s/runtime-contract.yaml'))$1)"; }
user="$(contract "['uid']"):$(contract "['gid']")"
tmpfs=()
for path in $(contract "['writablePaths']" | tr -d "[]',"); do
    tmpfs+=(--tmpfs "$path:rw,mode=1777")
done

for run in $(seq "$runs"); do
    name="time-start-$$-$run"
    start=${EPOCHREALTIME/./}
    "$ENGINE" run --detach --name "$name" --read-only "${tmpfs[@]}" --user "$user" --cap-drop ALL \
        --security-opt no-new-privileges --cpus 1 --memory 1g --network host \
        --env "BENTOML_PORT=$port" "$image" >/dev/null
    until curl -fs -o /dev/null "http://127.0.0.1:$port/readyz"; do sleep 0.05; done
    ready=${EPOCHREALTIME/./}
    "$ENGINE" rm --force "$name" >/dev/null
    echo "run $run: /readyz 200 after $(((ready - start) / 1000)) ms"
done
