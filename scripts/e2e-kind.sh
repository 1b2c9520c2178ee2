#!/usr/bin/env bash
# The end-to-end test of the chart and the image on a kind cluster: the one recipe, which the e2e
# job of .github/workflows/ci.yml runs and docs/ci-cd.md tells you to run by hand.
#
#   make tools && kind create cluster --config k8s/kind-config.yaml && bash scripts/e2e-kind.sh
#
# Needs: the kind cluster $KIND_CLUSTER (default breast-cancer-classifier, the name in
# k8s/kind-config.yaml) as the current kubectl context; Docker, kind, kubectl, curl and jq on PATH;
# `make tools` done (the venv, and the pinned helm in .tools/bin).
#
# Steps, each failing fast with a message naming it:
#   1. image A: `make image` (model A, the store's or the promoted model), loaded into kind, also
#      under the name k8s/client-job.yaml uses;
#   2. the namespace, enforcing, auditing and warning Pod Security "restricted"; every command
#      that writes to it fails on any admission warning. The callers: the ServiceAccount $CALLER
#      in it, and one of the same name in the namespace $OUTSIDER;
#   3. helm upgrade --install with image A and modelTag A, helm test, /predict through a
#      port-forward with a token of $CALLER (`kubectl create token`), refused without a token (401)
#      and with the outsider's (403), the in-cluster client Job, python -m k8s.verify (serves
#      model A);
#   4. model B (`make train SEED=$SEED_B`) and image B serving it (`MODEL_TAG=... make image`),
#      loaded into kind;
#   5. the load Job (k8s/load-job.yaml running k8s/load_test.py as $CALLER: 8 keep-alive
#      connections, each request with the Job's projected token) and,
#      while it runs, helm upgrade to image B and modelTag B; the load must end after the old pods
#      are gone, with no error at all and answers from both models; k8s.verify (serves model B);
#   6. helm rollback to the first revision; k8s.verify (serves model A again); helm history;
#   7. helm uninstall; nothing labelled with the release's instance label may remain; the
#      namespace $OUTSIDER is deleted.
# On failure: pods, descriptions, events, logs of the release and the load Job, helm history.
#
# Image A's record stays make image's default, .bentoml/last-image.env, which the workflow reads to
# publish the tested image; image B's goes to .bentoml/e2e-image-b.env. The cluster is left running
# (kind delete cluster --name breast-cancer-classifier); a re-run starts from a fresh namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER=${KIND_CLUSTER:-breast-cancer-classifier}
SEED_B=${SEED_B:-7}         # the second model's seed (its quality gate passes, see README)
LOCAL_PORT=${LOCAL_PORT:-8080}
# Fixed, not settings: k8s/client-job.yaml and k8s/load-job.yaml are rendered for this release and
# namespace (tests/workflows/test_e2e_kind.py checks that they agree).
RELEASE=breast-cancer-classifier
NAMESPACE=breast-cancer-classifier
CHART=charts/breast-cancer-classifier
CLIENT_JOB=breast-cancer-classifier-client
LOAD_JOB=breast-cancer-classifier-load
# Callers: an account of the namespace (the load Job runs as it), and one of another namespace,
# which the chart's default allow-lists leave out.
CALLER=e2e-caller
OUTSIDER=breast-cancer-classifier-outsider
# Every object of the release carries the instance label; the service pods also carry the chart's
# name (the Deployment's selector), which the smoke-test pods do not.
INSTANCE="app.kubernetes.io/instance=$RELEASE"
SERVICE_PODS="app.kubernetes.io/name=breast-cancer-classifier,$INSTANCE"
RECORD_A=.bentoml/last-image.env
RECORD_B=.bentoml/e2e-image-b.env

export ENGINE=docker # kind loads images from Docker
export BENTOML_HOME=${BENTOML_HOME:-$PWD/.bentoml}
unset IMAGE_INFO_FILE # image A must be recorded where the workflow reads it ($RECORD_A)
PATH="$PWD/.tools/bin:$PATH"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/e2e-kind.XXXXXX")
current_step="start"
forward_pid=""

step() {
    current_step=$1
    printf '\n==> e2e-kind: %s\n' "$1"
}

die() {
    echo "e2e-kind: $*" >&2
    exit 1
}

# The value of KEY in an image record (scripts/build-image.sh writes one KEY=value a line).
record_value() {
    sed -n "s/^$2=//p" "$1"
}

# Runs a command that writes to the namespace, showing its output, and fails if the API server
# answered with a warning: Pod Security Admission's warn mode reports that way ("would violate
# PodSecurity "restricted:latest": ...") what its enforce mode refuses, and so do deprecated APIs.
# kubectl prints "Warning: ..."; helm logs it through client-go (a klog line from warnings.go).
admitted() {
    local log=$scratch/admitted.log
    "$@" 2>&1 | tee "$log" # pipefail: the command's own failure fails the step
    if grep -E 'Warning: |would violate PodSecurity|warnings\.go:[0-9]+\]' "$log" >/dev/null; then
        die "the API server warned during '$*' (see above); the namespace enforces Pod Security restricted"
    fi
}

# Waits for a Job to succeed or fail (kubectl wait can only wait for one of the two), saves its log
# to $scratch/<job>.log and prints it, and fails unless the Job succeeded.
wait_for_job() {
    local job=$1 timeout=$2 state
    local deadline=$((SECONDS + timeout))
    while :; do
        state=$(kubectl --namespace "$NAMESPACE" get "job/$job" -o jsonpath='{.status.succeeded}/{.status.failed}')
        [[ $state == 1/* || $state == */[1-9]* ]] && break
        if ((SECONDS > deadline)); then
            state="still running after ${timeout}s"
            break
        fi
        sleep 3
    done
    kubectl --namespace "$NAMESPACE" logs "job/$job" --tail=-1 >"$scratch/$job.log" || true
    cat "$scratch/$job.log"
    [[ $state == 1/* ]] || die "job $job did not succeed (succeeded/failed: $state); its log is above"
}

# Waits until a Job's log contains a line starting with $2 (the log is read whole, not piped into
# grep -q, whose early exit would fail the pipeline under pipefail).
wait_for_log() {
    local job=$1 prefix=$2 timeout=$3 logs
    local deadline=$((SECONDS + timeout))
    while :; do
        logs=$(kubectl --namespace "$NAMESPACE" logs "job/$job" 2>/dev/null || true)
        [[ $'\n'$logs == *$'\n'"$prefix"* ]] && return 0
        if [[ -n $(kubectl --namespace "$NAMESPACE" get "job/$job" -o jsonpath='{.status.failed}') ]]; then
            printf '%s\n' "$logs"
            die "job $job failed before printing '$prefix'"
        fi
        ((SECONDS < deadline)) || die "job $job printed no '$prefix' within ${timeout}s: ${logs:-no log yet}"
        sleep 2
    done
}

# k8s.verify checks that every pod serves the Deployment's MODEL_TAG and diagnoses known rows; this
# first checks that MODEL_TAG is the expected model, so together they prove which model is served.
verify_serves() {
    local expected=$1 deployed
    deployed=$(kubectl --namespace "$NAMESPACE" get deployment --selector "$SERVICE_PODS" \
        -o jsonpath='{.items[0].spec.template.spec.containers[0].env[?(@.name=="MODEL_TAG")].value}')
    [[ $deployed == "$expected" ]] || die "the Deployment's MODEL_TAG is '$deployed', expected $expected"
    .venv/bin/python -m k8s.verify --release "$RELEASE" --namespace "$NAMESPACE" --timeout 300 | tee "$scratch/verify.log"
    grep -F "serves model $expected" "$scratch/verify.log" >/dev/null \
        || die "k8s.verify passed but reported no pod serving $expected"
}

diagnostics() {
    set +e # show as much as there is
    kubectl get namespace "$NAMESPACE" >/dev/null 2>&1 || return 0
    echo "--- e2e-kind: diagnostics of namespace $NAMESPACE" >&2
    kubectl --namespace "$NAMESPACE" get all,hpa,pdb,jobs,configmaps -o wide
    kubectl --namespace "$NAMESPACE" describe pods
    kubectl --namespace "$NAMESPACE" get events --sort-by=.lastTimestamp
    kubectl --namespace "$NAMESPACE" logs --selector "$INSTANCE" --all-containers --prefix --tail=200
    kubectl --namespace "$NAMESPACE" logs --selector "app.kubernetes.io/name=$LOAD_JOB" --prefix --tail=200
    helm history "$RELEASE" --namespace "$NAMESPACE"
}

on_exit() {
    local status=$?
    [[ -z $forward_pid ]] || kill "$forward_pid" 2>/dev/null || true
    if ((status != 0)); then
        echo "e2e-kind: FAILED during: $current_step (exit status $status)" >&2
        diagnostics
        echo "e2e-kind: FAILED during: $current_step (exit status $status); diagnostics above" >&2
    fi
    rm -rf "$scratch"
}
trap on_exit EXIT

step "check the prerequisites"
for tool in docker kind kubectl curl jq make; do
    command -v "$tool" >/dev/null || die "$tool is not on PATH (docs/ci-cd.md lists what the e2e needs)"
done
[[ -x .venv/bin/python && -x .tools/bin/helm ]] || die "the venv or .tools/bin/helm is missing: run make tools"
docker info >/dev/null 2>&1 || die "Docker does not answer (docker info); kind loads images from Docker"
kind get clusters 2>/dev/null | grep -x "$KIND_CLUSTER" >/dev/null \
    || die "no kind cluster $KIND_CLUSTER: kind create cluster --config k8s/kind-config.yaml"
context=$(kubectl config current-context 2>/dev/null || true)
# It installs, upgrades and uninstalls releases and deletes a namespace: never on another cluster.
[[ $context == "kind-$KIND_CLUSTER" ]] \
    || die "the current kubectl context is '$context', not kind-$KIND_CLUSTER: kubectl config use-context kind-$KIND_CLUSTER"

step "1. build image A (make image) and load it into kind"
make image
IMAGE_A=$(record_value "$RECORD_A" IMAGE)
IMAGE_REPOSITORY=$(record_value "$RECORD_A" IMAGE_REPOSITORY)
IMAGE_TAG_A=$(record_value "$RECORD_A" IMAGE_TAG)
MODEL_TAG_A=$(record_value "$RECORD_A" MODEL_TAG)
[[ -n $MODEL_TAG_A && $IMAGE_A == "$IMAGE_REPOSITORY:$IMAGE_TAG_A" ]] \
    || die "$RECORD_A does not record image A as IMAGE=<IMAGE_REPOSITORY>:<IMAGE_TAG> with a MODEL_TAG"
echo "image A: $IMAGE_A serving $MODEL_TAG_A"
# k8s/client-job.yaml names the image by the chart's appVersion: give the tested image that name too.
client_image="$IMAGE_REPOSITORY:$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$CHART/Chart.yaml")"
docker tag "$IMAGE_A" "$client_image"
kind load docker-image "$IMAGE_A" "$client_image" --name "$KIND_CLUSTER"

step "2. create namespace $NAMESPACE enforcing Pod Security restricted, and the callers"
for namespace in "$NAMESPACE" "$OUTSIDER"; do
    if kubectl get namespace "$namespace" >/dev/null 2>&1; then
        echo "namespace $namespace is left from an earlier run: deleting it"
        kubectl delete namespace "$namespace" --wait --timeout=5m
    fi
done
admitted kubectl apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NAMESPACE
  labels:
    pod-security.kubernetes.io/enforce: restricted
    pod-security.kubernetes.io/enforce-version: latest
    pod-security.kubernetes.io/audit: restricted
    pod-security.kubernetes.io/audit-version: latest
    pod-security.kubernetes.io/warn: restricted
    pod-security.kubernetes.io/warn-version: latest
EOF
admitted kubectl --namespace "$NAMESPACE" create serviceaccount "$CALLER"
kubectl create namespace "$OUTSIDER"
kubectl --namespace "$OUTSIDER" create serviceaccount "$CALLER"

# --rollback-on-failure is Helm 4's name for --atomic (scripts/install-tools.sh pins Helm 4).
step "3. helm upgrade --install with image A and model A"
admitted helm upgrade --install "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
    --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG_A" --set modelTag="$MODEL_TAG_A" \
    --rollback-on-failure --wait --timeout 10m
revision_a=$(helm status "$RELEASE" --namespace "$NAMESPACE" -o json | jq -r .version)

step "3. helm test"
admitted helm test "$RELEASE" --namespace "$NAMESPACE" --logs --timeout 5m

step "3. POST /predict through kubectl port-forward, with and without an allowed token"
kubectl --namespace "$NAMESPACE" port-forward "service/$RELEASE" "$LOCAL_PORT:http" >"$scratch/port-forward.log" 2>&1 &
forward_pid=$!
ready=false
for _ in $(seq 30); do
    if curl -fsS "http://127.0.0.1:$LOCAL_PORT/readyz" >/dev/null 2>&1; then
        ready=true
        break
    fi
    sleep 1
done
$ready || die "GET /readyz through the port-forward did not answer 200 within 30 s: $(cat "$scratch/port-forward.log")"
audience=$(kubectl --namespace "$NAMESPACE" get deployment --selector "$SERVICE_PODS" \
    -o jsonpath='{.items[0].spec.template.spec.containers[0].env[?(@.name=="AUTH_AUDIENCE")].value}')
[[ -n $audience ]] || die "the Deployment sets no AUTH_AUDIENCE: the chart's default is auth.enabled=true"
# The tokens reach curl in header files, never on a command line.
for caller in "$NAMESPACE" "$OUTSIDER"; do
    token=$(kubectl --namespace "$caller" create token "$CALLER" --audience "$audience")
    printf 'Authorization: Bearer %s\n' "$token" >"$scratch/$caller.header"
done
curl -fsS -H "@$scratch/$NAMESPACE.header" -H 'Content-Type: application/json' \
    --data "@$CHART/files/malignant-example.json" "http://127.0.0.1:$LOCAL_PORT/predict" | tee "$scratch/answer.json"
echo
jq -e '.diagnosis == "malignant"' "$scratch/answer.json" >/dev/null || die "the malignant example was not diagnosed malignant"
# Refused: without a token 401 with `WWW-Authenticate: Bearer`; as an account of another namespace 403.
for expected in 401 403; do
    token_header=()
    [[ $expected == 403 ]] && token_header=(-H "@$scratch/$OUTSIDER.header")
    status=$(curl -sS -o "$scratch/refused.json" -D "$scratch/refused.headers" -w '%{http_code}' "${token_header[@]}" \
        -H 'Content-Type: application/json' --data "@$CHART/files/malignant-example.json" \
        "http://127.0.0.1:$LOCAL_PORT/predict")
    [[ $status == "$expected" ]] \
        || die "POST /predict ${token_header[*]:+as $OUTSIDER/$CALLER }answered $status, not $expected: $(cat "$scratch/refused.json")"
    if [[ $expected == 401 ]]; then
        grep -i '^www-authenticate: bearer' "$scratch/refused.headers" >/dev/null \
            || die "the 401 answer carries no 'WWW-Authenticate: Bearer' header"
    fi
    echo "POST /predict ${token_header[*]:+as $OUTSIDER/$CALLER }answered $status, as expected"
done
kill "$forward_pid"
forward_pid=""

step "3. the in-cluster client Job (k8s/client-job.yaml)"
admitted kubectl apply --namespace "$NAMESPACE" -f k8s/client-job.yaml
wait_for_job "$CLIENT_JOB" 240

step "3. python -m k8s.verify: the release serves model A"
verify_serves "$MODEL_TAG_A"

step "4. train model B (seed $SEED_B) and build image B serving it"
make train SEED="$SEED_B"
# The model just trained is the store's latest; the tag names its exact version.
MODEL_TAG_B=$(MODEL_TAG=breast_cancer:latest .venv/bin/python -m training.image model-tag)
[[ $MODEL_TAG_B != "$MODEL_TAG_A" ]] || die "training with seed $SEED_B saved no new model ($MODEL_TAG_B is model A)"
MODEL_TAG="$MODEL_TAG_B" IMAGE_INFO_FILE="$RECORD_B" make image
IMAGE_B=$(record_value "$RECORD_B" IMAGE)
IMAGE_TAG_B=$(record_value "$RECORD_B" IMAGE_TAG)
[[ $(record_value "$RECORD_B" MODEL_TAG) == "$MODEL_TAG_B" ]] || die "$RECORD_B does not record model $MODEL_TAG_B"
[[ -n $IMAGE_B && $IMAGE_B != "$IMAGE_A" ]] || die "image B ($IMAGE_B) is not a new image"
[[ $(record_value "$RECORD_A" IMAGE) == "$IMAGE_A" ]] || die "building image B overwrote image A's record $RECORD_A"
echo "image B: $IMAGE_B serving $MODEL_TAG_B"
kind load docker-image "$IMAGE_B" --name "$KIND_CLUSTER"

step "5. start the in-cluster load (k8s/load-job.yaml)"
admitted kubectl --namespace "$NAMESPACE" create configmap "$LOAD_JOB" \
    --from-file=k8s/load_test.py --from-file="$CHART/files/malignant-example.json"
kubectl set image --local -f k8s/load-job.yaml load="$IMAGE_A" -o yaml >"$scratch/load-job.yaml"
admitted kubectl apply --namespace "$NAMESPACE" -f "$scratch/load-job.yaml"
wait_for_log "$LOAD_JOB" "load: running" 180
old_pods_list=$(kubectl --namespace "$NAMESPACE" get pods --selector "$SERVICE_PODS" -o name)
mapfile -t old_pods <<<"$old_pods_list"
[[ -n ${old_pods[0]} ]] || die "no service pods before the upgrade"

step "5. helm upgrade to image B and model B, under load"
admitted helm upgrade "$RELEASE" "$CHART" --namespace "$NAMESPACE" \
    --set image.repository="$IMAGE_REPOSITORY" --set image.tag="$IMAGE_TAG_B" --set modelTag="$MODEL_TAG_B" \
    --rollback-on-failure --wait --timeout 10m
# The old pods drain (preStop) and stop after the rollout; the load must outlast them to prove that.
deadline=$((SECONDS + 120))
while [[ -n $(kubectl --namespace "$NAMESPACE" get "${old_pods[@]}" --ignore-not-found -o name) ]]; do
    ((SECONDS < deadline)) || die "the old pods (${old_pods[*]}) were not gone 120 s after the upgrade"
    sleep 2
done
[[ $(kubectl --namespace "$NAMESPACE" get "job/$LOAD_JOB" -o jsonpath='{.status.active}') == 1 ]] \
    || die "the load ended before the old pods were gone: raise DURATION_SECONDS in k8s/load-job.yaml"

step "5. the load Job: no error while the release moved from model A to model B"
wait_for_job "$LOAD_JOB" 420
summary=$(sed -n 's/^summary: //p' "$scratch/$LOAD_JOB.log")
jq -e --arg a "$MODEL_TAG_A" --arg b "$MODEL_TAG_B" '.models | has($a) and has($b)' <<<"$summary" >/dev/null \
    || die "the load saw answers from $(jq -c '.models | keys' <<<"$summary"), not from both $MODEL_TAG_A and $MODEL_TAG_B"

step "5. python -m k8s.verify: the release serves model B"
verify_serves "$MODEL_TAG_B"

step "6. helm rollback to revision $revision_a (image A, model A)"
admitted helm rollback "$RELEASE" "$revision_a" --namespace "$NAMESPACE" --wait --timeout 10m
helm history "$RELEASE" --namespace "$NAMESPACE"

step "6. python -m k8s.verify: the release serves model A again"
verify_serves "$MODEL_TAG_A"

step "7. helm uninstall leaves nothing labelled $INSTANCE"
# Created beside the release: the client Job carries the release's instance label (it is the chart's
# smoke test rendered as a Job), the load Job and its ConfigMap do not. Delete them with their pods.
kubectl --namespace "$NAMESPACE" delete -f k8s/client-job.yaml --ignore-not-found --cascade=foreground --wait --timeout=2m
kubectl --namespace "$NAMESPACE" delete "job/$LOAD_JOB" "configmap/$LOAD_JOB" --ignore-not-found --cascade=foreground \
    --wait --timeout=2m
kubectl delete namespace "$OUTSIDER" --ignore-not-found --wait --timeout=5m
helm uninstall "$RELEASE" --namespace "$NAMESPACE" --wait --timeout 5m
# Pods take their preStop drain to stop and EndpointSlices are garbage-collected: poll for a while.
deadline=$((SECONDS + 120))
while :; do
    remaining=$(kubectl --namespace "$NAMESPACE" get \
        all,configmaps,jobs,pdb,hpa,serviceaccounts,secrets,networkpolicies,ingresses,endpointslices \
        --selector "$INSTANCE" -o name)
    # Helm's own record of the release (Secrets labelled owner=helm) must be gone too.
    history=$(kubectl --namespace "$NAMESPACE" get secrets --selector "owner=helm,name=$RELEASE" -o name)
    [[ -z $remaining && -z $history ]] && break
    ((SECONDS < deadline)) || die "left behind 120 s after helm uninstall: ${remaining//$'\n'/ } ${history//$'\n'/ }"
    sleep 3
done

current_step="done"
printf '\ne2e-kind: OK: image A %s (model %s) installed, tested and verified; upgraded under load to\n' \
    "$IMAGE_A" "$MODEL_TAG_A"
printf 'image B %s (model %s) with no failed request; rolled back to model A; uninstalled cleanly.\n' \
    "$IMAGE_B" "$MODEL_TAG_B"
echo "Every call presented a ServiceAccount token; none (401) and another namespace's (403) were refused."
echo "load: $(jq -c '{requests, requests_per_second, closed_by_server, models}' <<<"$summary")"
