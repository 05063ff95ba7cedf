{{/*
What the chart knows about each service: the gRPC service its readiness probe asks about,
the consumer group it reads streams in and those streams, and whether it serves the ERP
webhooks. The groups and streams are the code's table (services/contract/src/streams.rs,
`readers`); deploy/check.sh compares the rendered KEDA triggers with
`ratemesh streams --json`, so a change there that is not made here fails the check.
*/}}
{{- define "ratemesh.catalog" -}}
ingest:
  grpcService: ratemesh.v1.InventoryIngest
  group: ""
  reads: []
  webhooks: true
rates:
  grpcService: ratemesh.v1.RateService
  group: rates
  reads: [stock, overrides, incentives]
  webhooks: false
incentives:
  grpcService: ratemesh.v1.IncentiveService
  group: incentives
  reads: [stock]
  webhooks: false
notifier:
  grpcService: ratemesh.v1.PartnerService
  group: notifier
  reads: [rates, incentives]
  webhooks: false
{{- end -}}

{{/*
The Deployments the chart runs, by component: one per service of the catalog, and with
archive.enabled an `ingest-archive` one, an ingest process that alone runs the input archive
(its volume, its settings) and that no Service selects. `service` is what it runs
(`ratemesh serve <service>`, its values under services.<service>), `meta` its catalog entry.
*/}}
{{- define "ratemesh.workloads" -}}
{{- $catalog := include "ratemesh.catalog" . | fromYaml }}
{{- range $service, $meta := $catalog }}
{{ $service }}:
  service: {{ $service }}
  archive: false
  meta: {{ $meta | toJson }}
{{- end }}
{{- if .Values.archive.enabled }}
ingest-archive:
  service: ingest
  archive: true
  meta: {{ $catalog.ingest | toJson }}
{{- end }}
{{- end -}}

{{/* Where the archive's volume is mounted in the ingest-archive pod. */}}
{{- define "ratemesh.archiveDir" -}}
/var/lib/ratemesh/archive
{{- end -}}

{{/* The console's gRPC endpoint of one service: dict "root" $ "service" "notifier". */}}
{{- define "ratemesh.grpcEndpoint" -}}
{{- $scheme := ternary "https" "http" .root.Values.tls.enabled -}}
{{- printf "%s://%s.%s.svc:%d" $scheme (include "ratemesh.serviceName" .) .root.Release.Namespace (.root.Values.ports.grpc | int) -}}
{{- end -}}

{{- define "ratemesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ratemesh.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's objects: dict "root" $ "service" "rates". */}}
{{- define "ratemesh.serviceName" -}}
{{- printf "%s-%s" (include "ratemesh.fullname" .root | trunc 50 | trimSuffix "-") .service -}}
{{- end -}}

{{- define "ratemesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ratemesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ratemesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ratemesh.labels" -}}
helm.sh/chart: {{ include "ratemesh.chart" . }}
{{ include "ratemesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ratemesh
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one service: dict "root" $ "service" "rates". */}}
{{- define "ratemesh.serviceSelectorLabels" -}}
{{ include "ratemesh.selectorLabels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "ratemesh.serviceLabels" -}}
{{ include "ratemesh.labels" .root }}
app.kubernetes.io/component: {{ .service }}
{{- end -}}

{{- define "ratemesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ratemesh.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ratemesh.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ratemesh.secretName" -}}
{{- default (printf "%s-secrets" (include "ratemesh.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "ratemesh.policyConfigMap" -}}
{{- default (printf "%s-policy" (include "ratemesh.fullname" .)) .Values.policy.existingConfigMap -}}
{{- end -}}

{{- define "ratemesh.hasPolicy" -}}
{{- if or .Values.policy.content .Values.policy.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/* The bundled Redis service's name (charts/redis). */}}
{{- define "ratemesh.bundledRedis" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The Secret and key with the bundled Redis's password, as a dict: the subchart's
redis.authSecret and redis.authSecretKey, from the parent's view of its values.
*/}}
{{- define "ratemesh.bundledRedisAuth" -}}
{{- $auth := .Values.redis.auth | default dict -}}
{{- if $auth.existingSecret -}}
name: {{ $auth.existingSecret }}
key: {{ $auth.existingSecretKey | default "password" }}
{{- else -}}
name: {{ include "ratemesh.bundledRedis" . }}-auth
key: password
{{- end -}}
{{- end -}}

{{/* Refuses TLS settings that cannot work. */}}
{{- define "ratemesh.validateTLS" -}}
{{- if .Values.tls.enabled -}}
{{- if not .Values.tls.secretName -}}
{{- fail "tls.secretName: TLS needs a Secret of type kubernetes.io/tls (tls.crt, tls.key) for the gRPC and webhook listeners" -}}
{{- end -}}
{{- if eq .Values.probes.liveness.type "grpc" -}}
{{- fail "probes.liveness.type: the kubelet's gRPC probe does not speak TLS; with tls.enabled use http (the admin port's /livez)" -}}
{{- end -}}
{{- else if .Values.tls.clientCASecret -}}
{{- fail "tls.clientCASecret: client certificates are verified only with tls.enabled=true" -}}
{{- end -}}
{{- end -}}

{{/* Refuses contradictory or missing Redis settings. */}}
{{- define "ratemesh.validateRedis" -}}
{{- $external := or .Values.redis.url .Values.redis.existingSecret -}}
{{- if and .Values.redis.enabled $external -}}
{{- fail "redis: set either redis.enabled (bundled Redis) or redis.url / redis.existingSecret (external Redis), not both" -}}
{{- end -}}
{{- if not (or .Values.redis.enabled $external) -}}
{{- fail "redis: ratemesh needs Redis: set redis.url or redis.existingSecret, or redis.enabled=true for the bundled one" -}}
{{- end -}}
{{- if and .Values.redis.url .Values.redis.existingSecret -}}
{{- fail "redis: set redis.url or redis.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.redis.cluster .Values.redis.enabled -}}
{{- fail "redis.cluster: the bundled Redis is a single node; set redis.enabled=false and list the cluster's seed nodes in redis.url (or redis.existingSecret)" -}}
{{- end -}}
{{- if and (contains "," .Values.redis.url) (not .Values.redis.cluster) -}}
{{- fail "redis.url: a comma-separated list of seed URLs is for Redis Cluster; set redis.cluster=true" -}}
{{- end -}}
{{- end -}}

{{/*
A settings map (`section: {key: value}`) as a YAML map of RATEMESH__SECTION__KEY: "value". Whole numbers are printed without an exponent (Helm reads YAML numbers as
float64, and 8388608 would otherwise become 8.388608e+06).
*/}}
{{- define "ratemesh.settingsEnv" -}}
{{- range $section, $keys := . }}
{{- if not (kindIs "map" $keys) }}
{{- fail (printf "settings.%s: must be a map of key: value" $section) }}
{{- end }}
{{- range $key, $value := $keys }}
{{- if or (kindIs "map" $value) (kindIs "slice" $value) }}
{{- fail (printf "settings.%s.%s: only scalar values can be set through the environment; put lists and tables in the secrets file or the policy" $section $key) }}
{{- end }}
{{- $text := toString $value }}
{{- /* Nested, not `and`: before Helm 3.7.1 (Go 1.17) `and` evaluates both operands, and
       comparing a string with a float64 is an error. */}}
{{- if kindIs "float64" $value }}
{{- if eq (float64 (int64 $value)) $value }}
{{- $text = toString (int64 $value) }}
{{- end }}
{{- end }}
{{ printf "RATEMESH__%s__%s" (upper $section) (upper $key) }}: {{ $text | toJson }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
The container's preStop pause (preStopSleepSeconds), as a `lifecycle` block or nothing.
The kubelet's `sleep` action is in the API from Kubernetes 1.29 but on by default only
from 1.30 (PodLifecycleSleepAction); earlier API servers reject or drop it. `auto` follows
the cluster's version (.Capabilities.KubeVersion, or --kube-version with helm template):
`sleep` from 1.30, else `exec` of preStopExecCommand when one is set, else no hook. The
ratemesh image is distroless and has no `sleep` binary, so `exec` needs a command that
exists in the image (or a volume) you run.
*/}}
{{- define "ratemesh.preStop" -}}
{{- $seconds := int .Values.preStopSleepSeconds -}}
{{- if gt $seconds 0 -}}
{{- $action := .Values.preStopSleepAction -}}
{{- if eq $action "auto" -}}
{{- if semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version -}}
{{- $action = "sleep" -}}
{{- else if .Values.preStopExecCommand -}}
{{- $action = "exec" -}}
{{- else -}}
{{- $action = "none" -}}
{{- end -}}
{{- end -}}
{{- if eq $action "sleep" }}
lifecycle:
  preStop:
    sleep:
      seconds: {{ $seconds }}
{{- else if eq $action "exec" }}
{{- if not .Values.preStopExecCommand -}}
{{- fail "preStopExecCommand: preStopSleepAction exec runs this command with the seconds appended (e.g. [\"/busybox/sleep\"]); the ratemesh image has no sleep binary" -}}
{{- end }}
lifecycle:
  preStop:
    exec:
      command: {{ append .Values.preStopExecCommand (toString $seconds) | toJson }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Whether preStopSleepSeconds asks for a pause that this cluster version gets none of. */}}
{{- define "ratemesh.preStopSkipped" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (not (include "ratemesh.preStop" .)) -}}true{{- end -}}
{{- end -}}
