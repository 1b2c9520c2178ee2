#!/usr/bin/env bash
# Makes sure the base image that BentoML's generated Dockerfile starts FROM exists locally.
#
#   bash scripts/build-base-image.sh [IMAGE]      (default python:3.11-slim)
#
# Where the engine can pull it (GitHub runners), pulling is all this does. Where no container
# registry is reachable (these machines and their CI), it builds an equivalent image once with
# debootstrap and tags it with the same name, so the bento builds unchanged. Set FORCE=1 to rebuild.
set -euo pipefail
# shellcheck source=scripts/container-engine.sh
source "$(dirname "$0")/container-engine.sh"

image="${1:-python:3.11-slim}"
suite=bookworm          # Debian 12 ships Python 3.11, the bento's Python
python_minor=3.11

if [[ -z "${FORCE:-}" ]] && "$ENGINE" image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image: present"
    exit 0
fi
# A pull fails within a second where no registry resolves, so trying it first costs nothing.
if [[ -z "${FORCE:-}" ]] && timeout 300 "$ENGINE" pull -q "$image" >/dev/null 2>&1; then
    echo "base image $image: pulled"
    exit 0
fi
if [[ "$image" != python:$python_minor-* ]]; then
    echo "cannot build $image locally: $suite only provides Python $python_minor" >&2
    exit 1
fi
if [[ $(id -u) != 0 ]] || ! command -v debootstrap >/dev/null; then
    echo "cannot pull $image and cannot build it: needs root and debootstrap" >&2
    exit 1
fi

echo "base image $image: no registry reachable, building it with debootstrap ($suite)"
rootfs=$(mktemp -d /var/tmp/base-rootfs.XXXXXX)
log=$(mktemp)
trap 'rm -rf "$rootfs" "$log"' EXIT
# Runs a noisy command, showing its output only when it fails.
quiet() { "$@" >"$log" 2>&1 || { tail -30 "$log" >&2; return 1; }; }

quiet debootstrap --variant=minbase --include=python3,python3-pip,ca-certificates "$suite" "$rootfs"

# Builds here go through an HTTPS proxy that re-signs traffic: trust the host's CA bundle inside.
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" \
    "$rootfs/usr/local/share/ca-certificates/host-ca-bundle.crt"
quiet chroot "$rootfs" update-ca-certificates
quiet chroot "$rootfs" apt-get clean
# Like Debian's slim images: no translations or documentation, now or from later apt installs.
printf 'path-exclude /usr/share/%s/*\n' locale doc man info >"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/* \
    "$rootfs"/usr/share/{locale,doc,man,info}/*

# SSL_CERT_FILE: uv (used by BentoML's Dockerfile) ignores the system store otherwise.
# PIP_BREAK_SYSTEM_PACKAGES: the Dockerfile pip-installs uv into Debian's system Python.
tar -C "$rootfs" -c . | quiet "$ENGINE" import \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
    --change "ENV PIP_BREAK_SYSTEM_PACKAGES=1" \
    --change "LABEL built-by=scripts/build-base-image.sh" \
    --change 'CMD ["python3"]' \
    - "$image"
"$ENGINE" image inspect --format "base image $image: built, {{.Size}} bytes" "$image"
