{{/*
Chart name. Truncated to 63 characters: Kubernetes names and label values are DNS labels.
*/}}
{{- define "breast-cancer-classifier.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: <release>-<chart name>, or just the release name when it already contains
the chart name. Truncated to 63 characters.
*/}}
{{- define "breast-cancer-classifier.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "breast-cancer-classifier.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "breast-cancer-classifier.labels" -}}
helm.sh/chart: {{ include "breast-cancer-classifier.chart" . }}
{{ include "breast-cancer-classifier.selectorLabels" . }}
app.kubernetes.io/version: {{ include "breast-cancer-classifier.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: breast-cancer-classifier
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the service pods. Immutable in a Deployment: never add to them.
*/}}
{{- define "breast-cancer-classifier.selectorLabels" -}}
app.kubernetes.io/name: {{ include "breast-cancer-classifier.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels of the smoke-test pods (helm test hook and client Job). Their name differs from the service's
so the Service never routes traffic to them.
*/}}
{{- define "breast-cancer-classifier.smokeTestLabels" -}}
helm.sh/chart: {{ include "breast-cancer-classifier.chart" . }}
app.kubernetes.io/name: {{ include "breast-cancer-classifier.name" . | trunc 57 | trimSuffix "-" }}-smoke
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: smoke-test
app.kubernetes.io/part-of: breast-cancer-classifier
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "breast-cancer-classifier.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "breast-cancer-classifier.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "breast-cancer-classifier.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/*
Image reference: repository@digest when a digest is given (immutable), else repository:tag.
*/}}
{{- define "breast-cancer-classifier.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "breast-cancer-classifier.imageTag" .) }}
{{- end }}
{{- end }}

{{/*
A memory or storage quantity in bytes: "512Mi", "1Gi", "1G", "1.5Gi", "1000" or 1000 (the forms the
schema admits).
*/}}
{{- define "breast-cancer-classifier.bytes" -}}
{{- $quantity := toString . }}
{{- $number := regexReplaceAll "[A-Za-z]+$" $quantity "" }}
{{- $suffix := trimPrefix $number $quantity }}
{{- $scale := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 }}
{{- if not (hasKey $scale $suffix) }}
{{- fail (printf "%q is not a memory quantity (a number, optionally followed by Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P or E)" $quantity) }}
{{- end }}
{{- mulf (float64 $number) (get $scale $suffix) }}
{{- end }}

{{/*
The least memory limit the service runs in: its worker, the model and BentoML's supervisor.
*/}}
{{- define "breast-cancer-classifier.minMemoryLimit" -}}
256Mi
{{- end }}

{{/*
Desired replicas: the HPA's minimum with autoscaling, else replicaCount (1 when unset). The
PodDisruptionBudget and NOTES.txt read it.
*/}}
{{- define "breast-cancer-classifier.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}
{{- .Values.autoscaling.minReplicas }}
{{- else }}
{{- $replicaCount := index .Values "replicaCount" }}
{{- if kindIs "invalid" $replicaCount }}1{{ else }}{{ $replicaCount }}{{ end }}
{{- end }}
{{- end }}

{{/*
The runtime contract's drainFile (k8s/runtime-contract.yaml; tests/charts checks they agree): the
preStop hook creates it, the service reads its path from DRAIN_FILE.
*/}}
{{- define "breast-cancer-classifier.drainFile" -}}
/tmp/draining
{{- end }}

{{/*
Combinations of values the schema cannot refuse, each with the reason. Included by deployment.yaml,
so `helm template`, `helm lint` and `helm install` all stop here.
*/}}
{{- define "breast-cancer-classifier.validate" -}}
{{- $autoscaling := .Values.autoscaling }}
{{- $replicaCount := index .Values "replicaCount" }}
{{- if and $autoscaling.enabled (not (kindIs "invalid" $replicaCount)) }}
{{- fail (printf "replicaCount (%v) is ignored while autoscaling.enabled is true, because the HorizontalPodAutoscaler owns the pod count: set autoscaling.minReplicas (and maxReplicas) instead, or set autoscaling.enabled=false to run exactly replicaCount pods" $replicaCount) }}
{{- end }}
{{- if and $autoscaling.enabled (gt (int $autoscaling.minReplicas) (int $autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%v) exceeds autoscaling.maxReplicas (%v)" $autoscaling.minReplicas $autoscaling.maxReplicas) }}
{{- end }}
{{- $resources := .Values.resources }}
{{- if not $resources }}
{{- fail (printf "resources must be set: resources.limits.cpu decides the number of BentoML workers and resources.limits.memory must be at least %s" (include "breast-cancer-classifier.minMemoryLimit" .)) }}
{{- end }}
{{- $limits := index $resources "limits" | default dict }}
{{- if kindIs "invalid" (index $limits "cpu") }}
{{- fail "resources.limits.cpu is required: BentoML starts one worker per whole CPU of the limit, and without a limit one per node core, each holding its own copy of the model within the pod's memory limit" }}
{{- end }}
{{- if kindIs "invalid" (index $limits "memory") }}
{{- fail (printf "resources.limits.memory is required (at least %s): without it a leaking or overloaded pod takes memory from its neighbours until the node evicts them" (include "breast-cancer-classifier.minMemoryLimit" .)) }}
{{- end }}
{{- $floor := include "breast-cancer-classifier.minMemoryLimit" . }}
{{- if lt (include "breast-cancer-classifier.bytes" $limits.memory | float64) (include "breast-cancer-classifier.bytes" $floor | float64) }}
{{- fail (printf "resources.limits.memory (%v) is below %s, the least the service runs in: the container would be OOM-killed while it loads the model" $limits.memory $floor) }}
{{- end }}
{{- if ge (int .Values.preStopSleepSeconds) (int .Values.terminationGracePeriodSeconds) }}
{{- fail "terminationGracePeriodSeconds must exceed preStopSleepSeconds, or pods are killed before they drain" }}
{{- end }}
{{- if and .Values.auth.enabled (or .Values.smokeTest.enabled .Values.clientJob.enabled) }}
{{- $caller := printf "%s/%s" .Release.Namespace (include "breast-cancer-classifier.clientAccountName" .) }}
{{- $diagnosis := include "breast-cancer-classifier.allowList" (dict "root" . "group" "diagnosis") | splitList "," }}
{{- if not (or (has $caller $diagnosis) (has (printf "%s/*" .Release.Namespace) $diagnosis)) }}
{{- fail (printf "the smoke test calls /predict as %s, which auth.allow.diagnosis does not allow (auth.allowReleaseNamespace is false): add it to auth.allow.diagnosis, or set smokeTest.enabled=false and clientJob.enabled=false" $caller) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The audience tokens must be bound to: auth.audience, else the Service's name.
*/}}
{{- define "breast-cancer-classifier.audience" -}}
{{- .Values.auth.audience | default (include "breast-cancer-classifier.fullname" .) }}
{{- end }}

{{/*
One route group's allow-list as the service reads it (comma-separated): the release's namespace when
auth.allowReleaseNamespace, then auth.allow.<group>. Call with (dict "root" $ "group" <name>).
*/}}
{{- define "breast-cancer-classifier.allowList" -}}
{{- $entries := list }}
{{- if .root.Values.auth.allowReleaseNamespace }}
{{- $entries = append $entries (printf "%s/*" .root.Release.Namespace) }}
{{- end }}
{{- $entries = concat $entries (index .root.Values.auth.allow .group) | uniq }}
{{- join "," $entries }}
{{- end }}

{{/*
The namespaces auth.allow names other than the release's, which the NetworkPolicy admits to the API port.
*/}}
{{- define "breast-cancer-classifier.allowedNamespaces" -}}
{{- $namespaces := list }}
{{- range $group, $entries := .Values.auth.allow }}
{{- range $entries }}
{{- $namespaces = append $namespaces (first (splitList "/" .)) }}
{{- end }}
{{- end }}
{{- without ($namespaces | uniq | sortAlpha) .Release.Namespace | join "," }}
{{- end }}

{{/*
The release's client ServiceAccount, rendered with auth.enabled: the smoke test (helm test Pod and
client Job) runs as it to present a token, and NOTES' recipe and k8s.verify use it too.
*/}}
{{- define "breast-cancer-classifier.clientAccountName" -}}
{{- printf "%s-client" (include "breast-cancer-classifier.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
Where a client pod's projected token is mounted; clients re-read it before each call, as the kubelet
replaces it before it expires.
*/}}
{{- define "breast-cancer-classifier.clientTokenDir" -}}
/var/run/secrets/tokens
{{- end }}

{{/*
checkov skips, as annotations on the objects they concern: each carries its reason and checkov
reports it as skipped. Only for checks that conflict with a documented choice of this chart.
*/}}
{{- define "breast-cancer-classifier.checkovImageSkips" -}}
checkov.io/skip1: CKV_K8S_40=The image's user is BentoML's bentoml (uid 1034, k8s/runtime-contract.yaml); runAsNonRoot and a non-zero uid are enforced
checkov.io/skip2: CKV_K8S_43=Pinning by digest is supported (image.digest) but the default is the tag, so clusters can run images loaded out of band (kind load)
checkov.io/skip3: CKV_K8S_15=pullPolicy IfNotPresent by default so kind-loaded images work; set image.pullPolicy to Always for mutable tags
{{- end }}

{{- define "breast-cancer-classifier.checkovPodSkips" -}}
{{ include "breast-cancer-classifier.checkovImageSkips" . }}
{{- if not .Values.networkPolicy.enabled }}
checkov.io/skip4: CKV2_K8S_6=The NetworkPolicy is turned off in these values (networkPolicy.enabled is false); the default renders it
{{- end }}
{{- end }}

{{- define "breast-cancer-classifier.checkovSmokeTestSkips" -}}
{{ include "breast-cancer-classifier.checkovImageSkips" . }}
checkov.io/skip4: CKV2_K8S_6=The smoke test receives no traffic; the NetworkPolicy guards the service pods
checkov.io/skip5: CKV_K8S_8=A run-to-completion test pod serves nothing a liveness probe could check
checkov.io/skip6: CKV_K8S_9=A run-to-completion test pod serves nothing a readiness probe could check
{{- end }}

{{/*
The smoke test's files: the script and the malignant example row (generated from wdbc/features.py).
*/}}
{{- define "breast-cancer-classifier.smokeTestData" -}}
smoke_test.py: |
  {{- .Files.Get "files/smoke_test.py" | nindent 2 }}
malignant-example.json: {{ .Files.Get "files/malignant-example.json" | trim | quote }}
{{- end }}

{{/*
The smoke test's pod spec, shared by the helm test hook Pod and the client Job. Same hardening as
the service pod; the service image is the only image a cluster can be assumed to have, and its
python3 runs files/smoke_test.py against the Service's DNS name.
Call with (dict "root" $ "configMap" <name of the ConfigMap holding smokeTestData>).
*/}}
{{- define "breast-cancer-classifier.smokeTestPodSpec" -}}
{{- $root := .root -}}
{{- $auth := $root.Values.auth.enabled -}}
restartPolicy: Never
{{- if $auth }}
serviceAccountName: {{ include "breast-cancer-classifier.clientAccountName" $root }}
{{- end }}
# The only credential is the projected token below, bound to the service's audience.
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: smoke-test
    image: {{ include "breast-cancer-classifier.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    command: ["python3", "/smoke-test/smoke_test.py"]
    env:
      - name: SERVICE_URL
        value: {{ printf "http://%s.%s.svc:%v" (include "breast-cancer-classifier.fullname" $root) $root.Release.Namespace $root.Values.service.port | quote }}
      - name: EXAMPLE_FILE
        value: /smoke-test/malignant-example.json
      - name: TIMEOUT_SECONDS
        value: {{ $root.Values.smokeTest.timeoutSeconds | quote }}
      {{- if $auth }}
      - name: TOKEN_FILE
        value: {{ include "breast-cancer-classifier.clientTokenDir" $root }}/token
      {{- end }}
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    resources:
      {{- toYaml $root.Values.smokeTest.resources | nindent 6 }}
    volumeMounts:
      - name: smoke-test
        mountPath: /smoke-test
        readOnly: true
      {{- if $auth }}
      - name: token
        mountPath: {{ include "breast-cancer-classifier.clientTokenDir" $root }}
        readOnly: true
      {{- end }}
volumes:
  - name: smoke-test
    configMap:
      name: {{ .configMap }}
  {{- if $auth }}
  - name: token
    projected:
      sources:
        - serviceAccountToken:
            audience: {{ include "breast-cancer-classifier.audience" $root | quote }}
            # The shortest lifetime the API server grants.
            expirationSeconds: 600
            path: token
  {{- end }}
{{- end }}
