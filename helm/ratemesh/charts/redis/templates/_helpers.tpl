{{- define "redis.fullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "redis.labels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
app.kubernetes.io/part-of: ratemesh
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "redis.selectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The Secret and key holding the Redis password (ratemesh.bundledRedisAuth in the parent
chart names the same). */}}
{{- define "redis.authSecret" -}}
{{- default (printf "%s-auth" (include "redis.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{- define "redis.authSecretKey" -}}
{{- if .Values.auth.existingSecret -}}{{ .Values.auth.existingSecretKey }}{{- else -}}password{{- end -}}
{{- end -}}

{{/*
Bytes of a Kubernetes memory quantity (512Mi, 1Gi, 1G, 1073741824, 1.5Gi). Fails on
anything else, so a limit it cannot read never leaves Redis without maxmemory.
*/}}
{{- define "redis.quantityBytes" -}}
{{- $q := toString . -}}
{{- $m := regexFind "^[0-9]+(\\.[0-9]+)?" $q -}}
{{- $unit := trimPrefix $m $q -}}
{{- $units := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- if or (not $m) (not (hasKey $units $unit)) -}}
{{- fail (printf "redis.resources.limits.memory: cannot read %q as a memory quantity (e.g. 1Gi); set redis.maxmemory instead" $q) -}}
{{- end -}}
{{- mulf (float64 $m) (index $units $unit) | floor | int64 -}}
{{- end -}}

{{/*
maxmemory in bytes: redis.maxmemory (bytes or a Redis unit: k, kb, m, mb, g, gb), else
maxmemoryPercent of the container's memory limit; always below that limit.
*/}}
{{- define "redis.maxmemory" -}}
{{- $limit := dig "limits" "memory" "" (.Values.resources | default dict) -}}
{{- $limitBytes := 0 -}}
{{- if $limit -}}
{{- $limitBytes = include "redis.quantityBytes" $limit | int64 -}}
{{- end -}}
{{- $bytes := 0 -}}
{{- if .Values.maxmemory -}}
{{- $given := .Values.maxmemory -}}
{{- if kindIs "float64" $given -}}{{- $given = int64 $given -}}{{- end -}}
{{- $given = toString $given | lower -}}
{{- $m := regexFind "^[0-9]+" $given -}}
{{- $units := dict "" 1 "k" 1000 "kb" 1024 "m" 1000000 "mb" 1048576 "g" 1000000000 "gb" 1073741824 -}}
{{- $unit := trimPrefix $m $given -}}
{{- if or (not $m) (not (hasKey $units $unit)) -}}
{{- fail (printf "redis.maxmemory: cannot read %q (bytes, or a number with k, kb, m, mb, g or gb)" $given) -}}
{{- end -}}
{{- $bytes = mul ($m | int64) (index $units $unit) -}}
{{- else if $limit -}}
{{- $percent := int .Values.maxmemoryPercent -}}
{{- if or (lt $percent 10) (gt $percent 95) -}}
{{- fail "redis.maxmemoryPercent: between 10 and 95 (the rest of the limit is for the AOF rewrite, buffers and fragmentation)" -}}
{{- end -}}
{{- $bytes = div (mul $limitBytes $percent) 100 -}}
{{- else -}}
{{- fail "redis: set redis.resources.limits.memory (maxmemory is derived from it) or redis.maxmemory; without either Redis grows until the node runs out of memory" -}}
{{- end -}}
{{- if and $limit (ge (int64 $bytes) (int64 $limitBytes)) -}}
{{- fail (printf "redis.maxmemory: %d bytes is not below the container's memory limit %s; Redis would be OOM-killed before refusing writes" (int64 $bytes) $limit) -}}
{{- end -}}
{{- $bytes -}}
{{- end -}}
