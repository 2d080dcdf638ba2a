{{- define "kwasm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kwasm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if eq .Release.Name .Chart.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kwasm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kwasm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kwasm.labels" -}}
{{ include "kwasm.selectorLabels" . }}
app.kubernetes.io/component: host
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kwasm.checks" -}}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) (int .Values.host.shutdownGraceMs) -}}
{{- fail "terminationGracePeriodSeconds must be above host.shutdownGraceMs: the kubelet would SIGKILL a draining host" -}}
{{- end -}}
{{- if le (int .Values.kafka.sessionTimeoutMs) (mul (int .Values.terminationGracePeriodSeconds) 1000) -}}
{{- fail "kafka.sessionTimeoutMs must be above terminationGracePeriodSeconds: a restarted static member would lose its partitions" -}}
{{- end -}}
{{- if and .Values.keda.enabled (gt (int .Values.keda.maxReplicaCount) (int .Values.keda.inputPartitions)) -}}
{{- fail "keda.maxReplicaCount must not exceed keda.inputPartitions: a host beyond the partition count holds nothing" -}}
{{- end -}}
{{- end -}}
