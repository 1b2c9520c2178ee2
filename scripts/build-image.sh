#!/usr/bin/env bash
# Builds the bento and its container image, tagged <repository>:<bento version>,
# <repository>:<service version> (pyproject.toml; the Helm chart's default tag, its appVersion) and
# <repository>:latest, then prints the image size. `make image` runs it once the model is trained.
#
# The image serves one exact model version, never `latest`: the bento is built from a copy of
# bentofile.yaml naming only that model and setting the image's MODEL_TAG to it, in a build context
# of its own that holds only the files the bento needs (training/image.py says why).
#
#   bash scripts/build-image.sh               the bento and the image
#   bash scripts/build-image.sh --bento-only  the bento alone; prints its tag last (no engine needed)
#
#   MODEL_TAG         the model to package (default: the registry's promoted model if the store has
#                     it, else the store's breast_cancer:latest; either way resolved to its version)
#   REGISTRY          the model registry (default registry/; see training/registry.py)
#   IMAGE_REPOSITORY  image repository (default breast-cancer-classifier)
#   ENGINE            docker | podman (default: the one present, see scripts/container-engine.sh)
#   BENTOML_HOME      BentoML store holding the trained model (default .bentoml)
#   IMAGE_INFO_FILE   where to record what was built (default .bentoml/last-image.env)
#
# The record is one KEY=value a line (IMAGE, IMAGE_REPOSITORY, IMAGE_TAG, BENTO_TAG, MODEL_TAG, VERSION,
# ENGINE), for tests/container and the workflow; the same lines are printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
bento_only=false
case "${1:-}" in
    "") ;;
    --bento-only) bento_only=true ;;
    *) echo "usage: bash scripts/build-image.sh [--bento-only]" >&2; exit 2 ;;
esac

export BENTOML_HOME
BENTOML_HOME=$(realpath -m "${BENTOML_HOME:-.bentoml}") # absolute: containerize runs elsewhere
export BENTOML_DO_NOT_TRACK=true
PATH="$PWD/.venv/bin:$PATH"
repository="${IMAGE_REPOSITORY:-breast-cancer-classifier}"
info_file="${IMAGE_INFO_FILE:-.bentoml/last-image.env}"

now() { echo $((${EPOCHREALTIME/./} / 1000)); } # milliseconds
elapsed() { local ms=$(($(now) - $1)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

scratch=$(mktemp -d "${TMPDIR:-/tmp}/build-image.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

start=$(now)
commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
version=$(python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
model_tag=$(python -m training.image model-tag) # exits non-zero, saying why, when there is no model
python -m training.image context "$model_tag" "$scratch/context"
# From inside the context, so the service imports only what the bento carries.
bento_tag=$(cd "$scratch/context" && bentoml build . --output tag \
    --label "source_commit=$commit" --label "version=$version" --label "model_tag=$model_tag" \
    | sed -n 's/^__tag__://p')
bento_info=$(python -c '
import sys, bentoml
bento = bentoml.get(sys.argv[1])
print(bento.path, *(model.tag for model in bento.info.models))' "$bento_tag")
read -r bento_path bento_models <<<"$bento_info"
if [[ "$bento_models" != "$model_tag" ]]; then
    echo "bento $bento_tag carries model(s) '$bento_models', expected exactly $model_tag" >&2
    exit 1
fi
echo "bentoml build: $bento_tag with $model_tag in $(elapsed "$start")"
if $bento_only; then
    echo "$bento_tag"
    exit 0
fi

# shellcheck source=scripts/container-engine.sh
source scripts/container-engine.sh

base_image=$(awk '/^FROM /{print $2; exit}' "$bento_path/env/docker/Dockerfile")
pinned_base=$(awk '/^FROM /{print $2; exit}' docker/base-image.Dockerfile)
if [[ $base_image != "$pinned_base" ]]; then
    echo "build-image: BentoML's Dockerfile starts FROM $base_image but docker/base-image.Dockerfile names" \
        "$pinned_base: change bentofile.yaml (docker.python_version, docker.distro) or that file to agree" >&2
    exit 1
fi
bash scripts/build-base-image.sh "$base_image"

image="$repository:${bento_tag#*:}"
start=$(now)
# BentoML 1.4.40 rejects the bento's own dockerfile_template at containerize time unless its
# temporary build context lies under the working directory (bentoml/BentoML#5566): run it from a
# fresh TMPDIR that is also the working directory.
context_dir="$scratch/containerize"
mkdir "$context_dir"
(
    cd "$context_dir"
    # Host networking: these machines allow no traffic from the engine's bridge network.
    TMPDIR="$context_dir" bentoml containerize "$bento_tag" --backend "$ENGINE" \
        --image-tag "$image" --image-tag "$repository:$version" --image-tag "$repository:latest" \
        --opt network=host \
        --opt "label=model_tag=$model_tag" --opt "label=bento_tag=$bento_tag" \
        --opt "label=source_commit=$commit" --opt "label=version=$version"
)
echo "bentoml containerize: $image in $(elapsed "$start")"

size=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
echo "image size: $((size / 1000000)) MB ($size bytes)"
"$ENGINE" history --no-trunc --format '{{.Size}}\t{{.CreatedBy}}' "$image" | grep -v '^0' \
    | sed 's|\t.*/bin/sh -c |\t|' | cut -c 1-110

mkdir -p "$(dirname "$info_file")"
cat >"$info_file" <<EOF
IMAGE=$image
IMAGE_REPOSITORY=$repository
IMAGE_TAG=${bento_tag#*:}
BENTO_TAG=$bento_tag
MODEL_TAG=$model_tag
VERSION=$version
ENGINE=$ENGINE
EOF
cat "$info_file"
