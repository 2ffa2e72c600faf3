{{/* The release's full name, the prefix of every object the chart creates (at most 63 characters). */}}
{{- define "quasar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The labels that select the operator's pod. */}}
{{- define "quasar.selectorLabels" -}}
app.kubernetes.io/name: quasar-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object the chart creates. */}}
{{- define "quasar.commonLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quasar
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* Labels of the operator's own objects. */}}
{{- define "quasar.labels" -}}
app.kubernetes.io/name: quasar-operator
{{ include "quasar.commonLabels" . }}
{{- end -}}

{{/* values.schema.json requires serviceAccount.name when serviceAccount.create is false. */}}
{{- define "quasar.serviceAccountName" -}}
{{- default (include "quasar.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The operator's image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "quasar.operatorImage" -}}
{{- with .Values.operator.image -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The namespaces the operator watches, as a JSON list: the release's own, then operator.watchNamespaces.
Empty with operator.clusterWide (every namespace). Read it with `include ... | fromJsonArray`.
*/}}
{{- define "quasar.watchedNamespaces" -}}
{{- if .Values.operator.clusterWide -}}
[]
{{- else -}}
{{- prepend .Values.operator.watchNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The custom resources listed under `miners` or `validators`, with the chart's images filled in where a spec
names none. Arguments: (list $ "miners" "QuasarMiner" (list "engine" "neuron")).
*/}}
{{- define "quasar.customResources" -}}
{{- $root := index . 0 -}}
{{- $key := index . 1 -}}
{{- $kind := index . 2 -}}
{{- $sections := index . 3 -}}
{{- $seen := dict -}}
{{- range $i, $item := index $root.Values $key -}}
{{- $namespace := $item.namespace | default $root.Release.Namespace -}}
{{- $where := printf "%s[%d] (%s/%s)" $key $i $namespace $item.name -}}
{{- if hasKey $seen (printf "%s/%s" $namespace $item.name) -}}
{{- fail (printf "%s: a %s of that name is already listed" $where $kind) -}}
{{- end -}}
{{- $_ := set $seen (printf "%s/%s" $namespace $item.name) true -}}
{{- with include "quasar.watchedNamespaces" $root | fromJsonArray -}}
{{- if not (has $namespace .) -}}
{{- fail (printf "%s: the operator does not watch namespace %s (it watches %s: add it to operator.watchNamespaces)" $where $namespace (join ", " .)) -}}
{{- end -}}
{{- end -}}
{{- $spec := deepCopy $item.spec -}}
{{- range $section := $sections -}}
{{- $part := get $spec $section | default dict -}}
{{- $_ := set $part "image" ($part.image | default (get $root.Values.images $section)) -}}
{{- $_ := set $spec $section $part -}}
{{- end }}
---
apiVersion: quasar.ai/v1alpha1
kind: {{ $kind }}
metadata:
  name: {{ $item.name }}
  namespace: {{ $namespace }}
  labels:
    {{- merge (include "quasar.commonLabels" $root | fromYaml) ($item.labels | default dict) | toYaml | nindent 4 }}
  {{- with $item.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- toYaml $spec | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
checkov findings on the operator's pods that the chart leaves as they are, each with its reason
(checkov.io/skipN annotations). The digest skip goes away once operator.image.digest is set.
*/}}
{{- define "quasar.checkovSkips" -}}
{{- if not .Values.operator.image.digest }}
checkov.io/skip1: CKV_K8S_43=The image is pinned by its release tag; set operator.image.digest to pin it by digest.
{{- end }}
checkov.io/skip2: CKV_K8S_15=Release tags are never re-pushed, so IfNotPresent pulls the same image; Always is a value away.
checkov.io/skip3: CKV2_K8S_6=The pod listens only on its metrics and liveness ports, which scrapers and the kubelet must reach; a portable NetworkPolicy would allow both from anywhere.
{{- end -}}
