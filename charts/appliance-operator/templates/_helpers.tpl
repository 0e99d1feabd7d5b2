{{/* Chart name, truncated to a DNS label. */}}
{{- define "appliance-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: the prefix of every object's name. Kept to 50 characters so that suffixed names
("-edit", "-metrics", ...) stay valid DNS labels.
*/}}
{{- define "appliance-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "appliance-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "appliance-operator.labels" -}}
helm.sh/chart: {{ include "appliance-operator.chart" . }}
{{ include "appliance-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: appliance-operator
{{- end }}

{{/* Labels that select the operator pod (immutable in the Deployment: never add to them). */}}
{{- define "appliance-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "appliance-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "appliance-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "appliance-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "appliance-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The namespaces the operator watches, one per line ("" in cluster scope: all of them).
Fails on a combination that would give the operator a watch it has no RBAC for.
*/}}
{{- define "appliance-operator.watchNamespaces" -}}
{{- if eq .Values.rbac.scope "namespace" }}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- range $namespaces | uniq }}
{{ . }}
{{- end }}
{{- else if .Values.watchNamespaces }}
{{- fail "watchNamespaces is only used with rbac.scope=namespace; with rbac.scope=cluster the operator watches every namespace (set rbac.scope=namespace, or empty watchNamespaces)" }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it watches (a ClusterRole in cluster scope,
a Role per namespace in namespace scope): exactly the calls of operator/appliance_operator
(kubeapi.py) and of kopf's watches. Why each verb is there: docs/install.md, "RBAC".
*/}}
{{- define "appliance-operator.namespacedRules" -}}
# kopf lists+watches jobs (its index); ttlSecondsAfterFinished deletes them. No patch/update:
# the operator uses only kopf event/index handlers, which write nothing to a job.
- apiGroups: ["appliance.dev"]
  resources: ["executejobs"]
  verbs: ["get", "list", "watch", "delete"]
# One JSON merge patch of the status subresource per change.
- apiGroups: ["appliance.dev"]
  resources: ["executejobs/status"]
  verbs: ["get", "patch"]
# Pods and the env Secret name their job as owner with blockOwnerDeletion: true. Where the
# OwnerReferencesPermissionEnforcement admission plugin is on, that needs this (it grants no
# API call: a custom resource has no finalizers endpoint).
- apiGroups: ["appliance.dev"]
  resources: ["executejobs/finalizers"]
  verbs: ["update"]
# Worker pods: kopf lists+watches those labelled app.kubernetes.io/managed-by=appliance-operator;
# the operator creates and deletes them.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# get: the Secrets that spec.env's secretKeyRefs name (the client's values Secret, or the
# user's), and the per-job env Secret read back after a restart; create: that env Secret
# (immutable, so never patched). No delete: a same-named Secret of an earlier job is left
# to the garbage collector. Never list/watch: that would be every Secret's value.
# docs/security.md says what each grant allows.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create"]
# WorkerPools: kopf lists+watches them (its index); the operator writes their status. Their
# idle pods and claim Secrets name the pool as owner with blockOwnerDeletion (finalizers).
- apiGroups: ["appliance.dev"]
  resources: ["workerpools"]
  verbs: ["list", "watch"]
- apiGroups: ["appliance.dev"]
  resources: ["workerpools/status"]
  verbs: ["patch"]
- apiGroups: ["appliance.dev"]
  resources: ["workerpools/finalizers"]
  verbs: ["update"]
# Phase-transition Events (the operator's and kopf's warnings).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.workerPools.networkPolicy.enabled }}
# The claim port's NetworkPolicy, one per WorkerPool (`<pool>-claim`, owned by the pool):
# created, read back on a conflict, replaced when it is not the wanted one.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "update"]
{{- end }}
{{- end }}
