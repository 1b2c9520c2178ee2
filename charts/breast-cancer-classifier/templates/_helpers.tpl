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
BentoML worker processes: floor(resources.limits.cpu), at least 1, the rule BentoML's own cpu_count
applies to a cgroup quota (so a 1500m pod never runs 2 workers throttled to 1.5 CPUs). Accepts "500m",
"1500m", "2", 2 and 0.5. Without this BentoML starts one worker per node core.
*/}}
{{- define "breast-cancer-classifier.workers" -}}
{{- $cpu := toString .Values.resources.limits.cpu }}
{{- if hasSuffix "m" $cpu }}
{{- max 1 (div (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else }}
{{- max 1 (floor (float64 $cpu)) }}
{{- end }}
{{- end }}

{{/*
Desired replicas, as seen by the PodDisruptionBudget.
*/}}
{{- define "breast-cancer-classifier.minReplicas" -}}
{{- if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas }}{{ else }}{{ .Values.replicaCount }}{{ end }}
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
checkov.io/skip4: CKV2_K8S_6=The NetworkPolicy is opt-in (networkPolicy.enabled) as it needs an enforcing CNI and the cluster's client namespaces
{{- end }}
{{- end }}

{{- define "breast-cancer-classifier.checkovSmokeTestSkips" -}}
{{ include "breast-cancer-classifier.checkovImageSkips" . }}
checkov.io/skip4: CKV2_K8S_6=The smoke test receives no traffic; the NetworkPolicy guards the service pods
checkov.io/skip5: CKV_K8S_8=A run-to-completion test pod serves nothing a liveness probe could check
checkov.io/skip6: CKV_K8S_9=A run-to-completion test pod serves nothing a readiness probe could check
{{- end }}

{{/*
The smoke test's files: the script and the malignant example row (generated from bento/features.py).
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
restartPolicy: Never
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
    securityContext:
      {{- toYaml $root.Values.containerSecurityContext | nindent 6 }}
    resources:
      {{- toYaml $root.Values.smokeTest.resources | nindent 6 }}
    volumeMounts:
      - name: smoke-test
        mountPath: /smoke-test
        readOnly: true
volumes:
  - name: smoke-test
    configMap:
      name: {{ .configMap }}
{{- end }}
