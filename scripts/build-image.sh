#!/usr/bin/env bash
# Builds the bento (bentofile.yaml) and its container image, tagged <repository>:<bento version>,
# <repository>:<service version> (pyproject.toml; the Helm chart's default tag, its appVersion) and
# <repository>:latest, then prints the image size. `make image` runs it once the model is trained.
#
#   IMAGE_REPOSITORY  image repository (default breast-cancer-classifier)
#   ENGINE            docker | podman (default: the one present, see scripts/container-engine.sh)
#   BENTOML_HOME      BentoML store holding the trained model (default .bentoml)
#   IMAGE_INFO_FILE   where to record what was built (default .bentoml/last-image.env)
#
# The record is one KEY=value a line (IMAGE, IMAGE_REPOSITORY, IMAGE_TAG, BENTO_TAG, MODEL_TAG,
# ENGINE), for tests/container and the workflow; the same lines are printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/container-engine.sh
source scripts/container-engine.sh

export BENTOML_HOME
BENTOML_HOME=$(realpath -m "${BENTOML_HOME:-.bentoml}") # absolute: containerize runs elsewhere
export BENTOML_DO_NOT_TRACK=true
PATH="$PWD/.venv/bin:$PATH"
repository="${IMAGE_REPOSITORY:-breast-cancer-classifier}"
info_file="${IMAGE_INFO_FILE:-.bentoml/last-image.env}"

now() { echo $((${EPOCHREALTIME/./} / 1000)); } # milliseconds
elapsed() { local ms=$(($(now) - $1)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }

start=$(now)
commit=$(git describe --always --dirty 2>/dev/null || echo unknown)
version=$(python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
bento_tag=$(bentoml build --output tag --label "source_commit=$commit" --label "version=$version" \
    | sed -n 's/^__tag__://p')
bento_info=$(python -c '
import sys, bentoml
bento = bentoml.get(sys.argv[1])
print(bento.path, bento.info.models[0].tag)' "$bento_tag")
read -r bento_path model_tag <<<"$bento_info"
echo "bentoml build: $bento_tag with $model_tag in $(elapsed "$start")"

bash scripts/build-base-image.sh "$(awk '/^FROM /{print $2; exit}' "$bento_path/env/docker/Dockerfile")"

image="$repository:${bento_tag#*:}"
start=$(now)
# BentoML 1.4.40 rejects the bento's own dockerfile_template at containerize time unless its
# temporary build context lies under the working directory (bentoml/BentoML#5566): run it from a
# fresh TMPDIR that is also the working directory.
context_dir=$(mktemp -d "${TMPDIR:-/tmp}/bentoml-containerize.XXXXXX")
trap 'rm -rf "$context_dir"' EXIT
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
ENGINE=$ENGINE
EOF
cat "$info_file"
