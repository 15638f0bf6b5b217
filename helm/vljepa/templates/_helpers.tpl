{{/* Names: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "vljepa.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vljepa.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vljepa.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vljepa.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vljepa
{{- end }}

{{- define "vljepa.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vljepa.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vljepa.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vljepa.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image; GPU pods ("gpu" true in the dict) get the -gpu tag. Call with (dict "root" $ "gpu" bool). */}}
{{- define "vljepa.image" -}}
{{- $tag := default .root.Chart.AppVersion .root.Values.image.tag }}
{{- if .gpu }}{{ $tag = printf "%s%s" $tag .root.Values.image.gpuTagSuffix }}{{ end }}
{{- printf "%s:%s" .root.Values.image.repository $tag }}
{{- end }}

{{- define "vljepa.mlflowName" -}}
{{- printf "%s-mlflow" (include "vljepa.fullname" .) }}
{{- end }}

{{- define "vljepa.mlflowUri" -}}
{{- printf "http://%s.%s.svc:%d" (include "vljepa.mlflowName" .) .Release.Namespace (int .Values.mlflow.port) }}
{{- end }}

{{/* The Service's names as clients write them, each with and without the port. */}}
{{- define "vljepa.mlflowAllowedHosts" -}}
{{- $n := include "vljepa.mlflowName" . }}
{{- $ns := .Release.Namespace }}
{{- $port := int .Values.mlflow.port }}
{{- $hosts := list }}
{{- range (list $n (printf "%s.%s" $n $ns) (printf "%s.%s.svc" $n $ns) (printf "%s.%s.svc.%s" $n $ns .Values.clusterDomain)) }}
{{- $hosts = append $hosts . }}
{{- $hosts = append $hosts (printf "%s:%d" . $port) }}
{{- end }}
{{- $hosts = concat $hosts (list "localhost" "localhost:*" "127.0.0.1" "127.0.0.1:*") .Values.mlflow.allowedHosts }}
{{- join "," $hosts }}
{{- end }}

{{/* S3 credentials, only through secretKeyRef to an existing Secret. */}}
{{- define "vljepa.s3SecretEnv" -}}
{{- if .Values.s3.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: {{ .Values.s3.secretAccessKeyKey }}
{{- end }}
{{- end }}

{{/* The Serve API's bearer token (Serve pods only), only through secretKeyRef to an existing Secret. */}}
{{- define "vljepa.authEnv" -}}
{{- if .Values.auth.existingSecret }}
- name: {{ .Values.auth.envName }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.auth.existingSecret }}
      key: {{ .Values.auth.secretKey }}
{{- end }}
{{- end }}

{{- define "vljepa.s3PlainEnv" -}}
{{- if .Values.s3.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ .Values.s3.endpoint | quote }}
{{- end }}
- name: AWS_REGION
  value: {{ .Values.s3.region | quote }}
{{- end }}

{{/* Environment of every Ray container: tracking URI, S3 settings, credentials, extra env. */}}
{{- define "vljepa.rayEnv" -}}
{{- if .Values.mlflow.enabled }}
- name: MLFLOW_TRACKING_URI
  value: {{ include "vljepa.mlflowUri" . | quote }}
{{- end }}
{{- include "vljepa.s3PlainEnv" . }}
{{- include "vljepa.s3SecretEnv" . }}
{{- range $k, $v := .Values.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end }}

{{/*
A RayCluster spec (RayJob.spec.rayClusterSpec, RayService.spec.rayClusterConfig, RayCluster.spec).
Call with (dict "root" $ "serve" bool).
*/}}
{{- define "vljepa.rayClusterSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $autoscaling := $v.autoscaling.enabled }}
{{- $w := $v.worker }}
{{- if not (and (le (int $w.minReplicas) (int $w.replicas)) (le (int $w.replicas) (int $w.maxReplicas))) }}
{{- fail (printf "worker: need minReplicas <= replicas <= maxReplicas, got %v <= %v <= %v" $w.minReplicas $w.replicas $w.maxReplicas) }}
{{- end }}
rayVersion: {{ $v.rayVersion | quote }}
enableInTreeAutoscaling: {{ $autoscaling }}
{{- if $autoscaling }}
autoscalerOptions:
  upscalingMode: {{ $v.autoscaling.upscalingMode }}
  idleTimeoutSeconds: {{ $v.autoscaling.idleTimeoutSeconds }}
{{- end }}
headGroupSpec:
  rayStartParams:
    {{- toYaml (merge (deepCopy $v.head.rayStartParams) (dict "dashboard-host" "0.0.0.0")) | nindent 4 }}
  template:
    metadata:
      labels:
        {{- include "vljepa.labels" $root | nindent 8 }}
        app.kubernetes.io/component: ray-head
    spec:
      {{- if not $autoscaling }}
      {{- /* the autoscaler sidecar needs the operator-made ServiceAccount and its token */}}
      serviceAccountName: {{ include "vljepa.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- end }}
      {{- with $v.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: ray-head
          image: {{ include "vljepa.image" (dict "root" $root "gpu" false) }}
          imagePullPolicy: {{ $v.image.pullPolicy }}
          env:
            {{- include "vljepa.rayEnv" $root | trim | nindent 12 }}
            {{- if and .serve $v.auth.existingSecret }}
            {{- include "vljepa.authEnv" $root | trim | nindent 12 }}
            {{- end }}
          ports:
            - {containerPort: 6379, name: gcs-server}
            - {containerPort: 8265, name: dashboard}
            - {containerPort: 10001, name: client}
            {{- if .serve }}
            - {containerPort: 8000, name: serve}
            {{- end }}
          resources:
            {{- toYaml $v.head.resources | nindent 12 }}
      {{- with $v.head.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.head.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
workerGroupSpecs:
  - groupName: {{ $v.worker.groupName }}
    replicas: {{ $v.worker.replicas }}
    minReplicas: {{ $v.worker.minReplicas }}
    maxReplicas: {{ $v.worker.maxReplicas }}
    {{- $wparams := deepCopy $v.worker.rayStartParams }}
    {{- if $v.gpu.enabled }}{{ $_ := set $wparams "num-gpus" (toString $v.gpu.perWorker) }}{{ end }}
    rayStartParams:
      {{- toYaml $wparams | nindent 6 }}
    template:
      metadata:
        labels:
          {{- include "vljepa.labels" $root | nindent 10 }}
          app.kubernetes.io/component: ray-worker
      spec:
        serviceAccountName: {{ include "vljepa.serviceAccountName" $root }}
        automountServiceAccountToken: false
        {{- with $v.imagePullSecrets }}
        imagePullSecrets:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        containers:
          - name: ray-worker
            image: {{ include "vljepa.image" (dict "root" $root "gpu" $v.gpu.enabled) }}
            imagePullPolicy: {{ $v.image.pullPolicy }}
            env:
              {{- include "vljepa.rayEnv" $root | trim | nindent 14 }}
              {{- if and .serve $v.auth.existingSecret }}
              {{- include "vljepa.authEnv" $root | trim | nindent 14 }}
              {{- end }}
            resources:
              {{- $res := deepCopy $v.worker.resources }}
              {{- if $v.gpu.enabled }}
              {{- $req := default dict $res.requests }}
              {{- $lim := default dict $res.limits }}
              {{- $_ := set $req $v.gpu.resourceName ($v.gpu.perWorker | toString) }}
              {{- $_ := set $lim $v.gpu.resourceName ($v.gpu.perWorker | toString) }}
              {{- $_ := set $res "requests" $req }}
              {{- $_ := set $res "limits" $lim }}
              {{- end }}
              {{- toYaml $res | nindent 14 }}
        {{- $sel := $v.worker.nodeSelector }}
        {{- if $v.gpu.enabled }}{{ $sel = merge (deepCopy $v.worker.nodeSelector) $v.gpu.nodeSelector }}{{ end }}
        {{- with $sel }}
        nodeSelector:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- $tol := $v.worker.tolerations }}
        {{- if $v.gpu.enabled }}{{ $tol = concat $v.worker.tolerations $v.gpu.tolerations }}{{ end }}
        {{- with $tol }}
        tolerations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
{{- end }}

{{/* A RayJob running `vljepa <job> <args>`. Call with (dict "root" $ "job" "embed" "args" list). */}}
{{- define "vljepa.rayJob" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
apiVersion: ray.io/v1
kind: RayJob
metadata:
  name: {{ printf "%s-%s" (include "vljepa.fullname" $root) .job }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "vljepa.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .job }}
    vljepa.io/job: {{ .job }}
spec:
  {{- $ep := printf "vljepa %s" .job }}
  {{- range .args }}{{ $ep = printf "%s %s" $ep (squote .) }}{{ end }}
  entrypoint: {{ $ep | quote }}
  shutdownAfterJobFinishes: true
  ttlSecondsAfterFinished: {{ $v.jobs.ttlSecondsAfterFinished }}
  activeDeadlineSeconds: {{ $v.jobs.activeDeadlineSeconds }}
  backoffLimit: 0
  submissionMode: {{ $v.jobs.submissionMode }}
  rayClusterSpec:
    {{- include "vljepa.rayClusterSpec" (dict "root" $root "serve" false) | trim | nindent 4 }}
{{- end }}
