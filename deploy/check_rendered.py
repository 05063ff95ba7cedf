#!/usr/bin/env python3
"""Checks over what `helm template` rendered and over deploy/compose.yaml.

Run by deploy/check.sh with the Python of its tool venv (PyYAML and jsonschema come with
check-jsonschema). Subcommands:

  split RENDERED OUT_CORE [RENDERED OUT_CORE ...]
                               validate custom resources (KEDA, prometheus-operator) against
                               deploy/schemas, write the Kubernetes-API documents to OUT_CORE
                               for kubernetes-validate, fail on any other unknown kind
  production RENDERED          assert what a production install must have, per service
  streams RENDERED RATEMESH    compare the KEDA triggers with `RATEMESH streams --json` run
                               under the rendered Redis settings (mode, prefix, partitions): each
                               consuming service scales on the lag of exactly the groups
                               and partition streams the code consumes, on the trigger type
                               of the rendered Redis mode
  expect RENDERED KIND=N ...   assert how many objects of each kind were rendered
  prestop RENDERED KUBE SECONDS [auto|auto-exec|exec]
                               assert the preStop pause rendered for Kubernetes KUBE: with
                               preStopSleepAction auto, the kubelet's sleep action from 1.30,
                               before that an exec hook when a command is set (auto-exec),
                               else none; with exec, an exec hook on every version
  ingress RENDERED             assert the webhook Ingress (when rendered) routes to ingest's
                               webhook port over TLS and the network policy lets its
                               controller in
  redis RENDERED               assert the bundled Redis (when rendered) has a maxmemory below
                               its container's memory limit with noeviction, requires a
                               password from a Secret, and that ratemesh and KEDA use it
  tls RENDERED SECRET [CA]      assert every service serves TLS from the kubernetes.io/tls
                               Secret SECRET mounted read-only (and verifies clients against
                               the Secret CA when given), with readiness on the admin port's
                               /readyz since the kubelet's gRPC probe has no TLS; with
                               SECRET "-", that no service has TLS and readiness is gRPC
  alerts RENDERED RULES         assert the PrometheusRule (when rendered) carries exactly the
                               rule groups of the rules file RULES (what promtool checks in CI)
  console RENDERED             assert the console (when console.enabled) runs in the rates
                               pods, whose gateway names the incentives and notifier Services
                               (https:// with TLS), behind a ClientIP-affinity Service, and
                               that the network policies let browsers and the gateway through
  archive RENDERED             assert the input archive (when archive.enabled) runs in one
                               ingest-archive pod only (Recreate, its claim at the archive
                               dir, the only pod with ingest.archive.dir) that only its own
                               Service (gRPC for what-if, admin) selects
  compose FILE                 structural check of the compose file (no Docker engine here)

Exit status 1 with one line per problem on failure.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from collections import Counter

import jsonschema
import yaml

SERVICES = ("ingest", "rates", "incentives", "notifier")
# The gRPC service each service's readiness probe must ask about.
READINESS = {
    "ingest": "ratemesh.v1.InventoryIngest",
    "rates": "ratemesh.v1.RateService",
    "incentives": "ratemesh.v1.IncentiveService",
    "notifier": "ratemesh.v1.PartnerService",
}
# KEDA's Redis Streams trigger types (one Redis, Redis Cluster) and the metadata key each
# takes the server address(es) in.
REDIS_TRIGGERS = {"redis-streams": "address", "redis-cluster-streams": "addresses"}
SCHEMA_DIR = pathlib.Path(__file__).resolve().parent / "schemas"
CORE_GROUPS = {"v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1"}
# The kubelet's preStop `sleep` action: in the API from 1.29 behind the PodLifecycleSleepAction
# gate (off there, so the API server drops the field), on by default from 1.30; 1.27 and 1.28
# reject it.
SLEEP_ACTION_FROM = (1, 30)
# Kubernetes memory quantity suffixes and Redis's maxmemory units, in bytes.
K8S_UNITS = {"": 1, "k": 1000, "K": 1000, "M": 10**6, "G": 10**9, "T": 10**12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
REDIS_UNITS = {"": 1, "k": 1000, "kb": 2**10, "m": 10**6, "mb": 2**20, "g": 10**9, "gb": 2**30}
ENV_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.add(message)

    def finish(self, what: str) -> int:
        if self.items:
            for item in self.items:
                print(f"FAIL {what}: {item}", file=sys.stderr)
            return 1
        print(f"ok   {what}")
        return 0


def load_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or not {"apiVersion", "kind", "metadata"} <= doc.keys():
            raise SystemExit(f"FAIL {path}: a rendered document is not a Kubernetes object: {str(doc)[:120]}")
    return docs


def ident(doc: dict) -> str:
    return f"{doc['kind']}/{doc['metadata'].get('name', '?')}"


def component(doc: dict) -> str | None:
    return (doc["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def cmd_split_all(pairs: list[str]) -> int:
    if len(pairs) % 2:
        raise SystemExit("FAIL split takes pairs of RENDERED OUT_CORE")
    failed = 0
    for rendered, out_core in zip(pairs[::2], pairs[1::2]):
        failed |= cmd_split(rendered, out_core)
    return failed


def cmd_split(rendered: str, out_core: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    problems.check(bool(docs), "nothing was rendered")
    seen = Counter(ident(d) for d in docs)
    for name, count in seen.items():
        problems.check(count == 1, f"{name} rendered {count} times")
    core = []
    for doc in docs:
        api = doc["apiVersion"]
        if api in CORE_GROUPS:
            core.append(doc)
            continue
        schema_path = SCHEMA_DIR / f"{api.replace('/', '_')}_{doc['kind']}.json"
        if not schema_path.exists():
            problems.add(f"{ident(doc)} ({api}) has no bundled schema in {SCHEMA_DIR.name}/")
            continue
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
            where = ".".join(str(p) for p in error.path) or "(root)"
            problems.add(f"{ident(doc)}: {where}: {error.message}")
    with open(out_core, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    return problems.finish(f"{rendered}: {len(docs)} objects, {len(docs) - len(core)} custom resources checked")


def cmd_expect(rendered: str, expectations: list[str]) -> int:
    problems = Problems()
    counts = Counter(d["kind"] for d in load_docs(rendered))
    for expectation in expectations:
        kind, _, number = expectation.partition("=")
        problems.check(counts[kind] == int(number), f"expected {number} {kind}, rendered {counts[kind]}")
    return problems.finish(f"{rendered}: {' '.join(expectations)}")


def cmd_production(rendered: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        comp = component(doc)
        if comp:
            by_kind.setdefault(doc["kind"], {})[comp] = doc

    deployments = by_kind.get("Deployment", {})
    for service in SERVICES:
        dep = deployments.get(service)
        if dep is None:
            problems.add(f"{service}: no Deployment")
            continue
        pod = dep["spec"]["template"]["spec"]
        containers = pod["containers"]
        problems.check(len(containers) == 1, f"{service}: expected one container")
        c = containers[0]
        problems.check(c.get("args", [])[:2] == ["serve", service], f"{service}: args are {c.get('args')}, not serve {service}")
        ready = c.get("readinessProbe") or {}
        problems.check(
            (ready.get("grpc") or {}).get("service") == READINESS[service],
            f"{service}: readiness probe must be gRPC health of {READINESS[service]}, is {ready}",
        )
        problems.check(bool(c.get("livenessProbe")), f"{service}: no liveness probe")
        res = c.get("resources") or {}
        problems.check(
            bool((res.get("requests") or {}).get("cpu")) and bool((res.get("requests") or {}).get("memory")),
            f"{service}: resources.requests needs cpu and memory",
        )
        problems.check(bool((res.get("limits") or {}).get("memory")), f"{service}: no memory limit")
        sc = c.get("securityContext") or {}
        problems.check(sc.get("readOnlyRootFilesystem") is True, f"{service}: root filesystem is writable")
        problems.check((pod.get("securityContext") or {}).get("runAsNonRoot") is True, f"{service}: may run as root")
        problems.check(len(pod.get("topologySpreadConstraints") or []) >= 2, f"{service}: no zone and host spread")
        env = {e["name"]: e for e in c.get("env", [])}
        for needed in ("RATEMESH_CONFIG", "RATEMESH__REDIS__URL", "RATEMESH__REDIS__PARTITIONS", "RATEMESH__SERVER__GRPC_ADDR"):
            problems.check(needed in env, f"{service}: env {needed} missing")
        problems.check(
            env.get("RATEMESH__SERVER__GRPC_ADDR", {}).get("value", "").startswith("0.0.0.0:"),
            f"{service}: gRPC must listen on 0.0.0.0 in a pod",
        )

    for service in SERVICES:
        problems.check(service in by_kind.get("Service", {}), f"{service}: no Service")
        pdb = by_kind.get("PodDisruptionBudget", {}).get(service)
        problems.check(pdb is not None, f"{service}: no PodDisruptionBudget")
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(service)
        scaled = by_kind.get("ScaledObject", {}).get(service)
        problems.check(hpa is not None or scaled is not None, f"{service}: no autoscaler (HPA or ScaledObject)")
        problems.check(not (hpa and scaled), f"{service}: both an HPA and a ScaledObject scale it")
        target = (hpa or scaled or {}).get("spec", {}).get("scaleTargetRef", {}).get("name")
        dep = deployments.get(service)
        if dep is not None and (hpa or scaled):
            problems.check(target == dep["metadata"]["name"], f"{service}: autoscaler targets {target}")
            problems.check("replicas" not in dep["spec"], f"{service}: Deployment sets replicas although autoscaled")
        if scaled is not None:
            # Which groups and streams: `streams`, against what the code consumes.
            problems.check(
                any(t["type"] in REDIS_TRIGGERS for t in scaled["spec"]["triggers"]),
                f"{service}: ScaledObject without a stream trigger",
            )
        np = by_kind.get("NetworkPolicy", {}).get(service)
        if np is None:
            problems.add(f"{service}: no NetworkPolicy")
            continue
        problems.check(set(np["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}, f"{service}: policy must cover ingress and egress")
        egress_blocks = [peer.get("ipBlock") for rule in np["spec"].get("egress", []) for peer in rule.get("to", []) if peer.get("ipBlock")]
        if service == "notifier":
            problems.check(
                any(b["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in b.get("except", []) for b in egress_blocks),
                "notifier: partner egress must be the internet without private ranges",
            )
        else:
            problems.check(not egress_blocks, f"{service}: only the notifier may egress to arbitrary addresses")
        ingress_ports = {p.get("port") for rule in np["spec"].get("ingress", []) for p in rule.get("ports", [])}
        problems.check(("http" in ingress_ports) == (service == "ingest"), f"{service}: webhook port open on the wrong service")

    for kind in ("ServiceMonitor",):
        problems.check(any(d["kind"] == kind for d in docs), f"no {kind}")
    return problems.finish(f"{rendered}: production assertions for {', '.join(SERVICES)}")


def rendered_env(docs: list[dict]) -> dict[str, str]:
    """The literal env of the first rendered ratemesh container (every service gets the same
    Redis settings)."""
    for doc in docs:
        if doc["kind"] == "Deployment" and component(doc) in SERVICES:
            container = doc["spec"]["template"]["spec"]["containers"][0]
            # Expanded as the kubelet does: $(VAR) of an earlier variable; a value from a
            # Secret is not in the render, so a placeholder stands in for it.
            known: dict[str, str] = {}
            literal: dict[str, str] = {}
            for e in container.get("env", []):
                if "value" in e:
                    literal[e["name"]] = ENV_REF.sub(lambda m: known.get(m.group(1), m.group(0)), e["value"])
                    known[e["name"]] = literal[e["name"]]
                else:
                    known[e["name"]] = "from-a-secret"
            return literal
    raise SystemExit("FAIL no ratemesh Deployment rendered")


def cmd_streams(rendered: str, ratemesh: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    env = rendered_env(docs)
    prefix, partitions = env["RATEMESH__REDIS__KEY_PREFIX"], env["RATEMESH__REDIS__PARTITIONS"]
    cluster = env.get("RATEMESH__REDIS__CLUSTER") == "true"
    # The rendered Redis settings (mode, seed nodes, prefix, partitions), as the pods get them.
    redis_env = {name: value for name, value in env.items() if name.startswith("RATEMESH__REDIS__")}
    run = subprocess.run(
        [ratemesh, "streams", "--json"],
        env={"PATH": os.environ.get("PATH", ""), **redis_env},
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise SystemExit(f"FAIL {ratemesh} streams --json: {run.stderr.strip()}")
    layout = json.loads(run.stdout)
    scaled = {component(d): d for d in docs if d["kind"] == "ScaledObject"}
    want_type = "redis-cluster-streams" if cluster else "redis-streams"
    for entry in layout["services"]:
        service = entry["service"]
        expected = {(key, c["group"]) for c in entry["consumes"] for key in c["keys"]}
        obj = scaled.pop(service, None)
        if not expected:
            problems.check(obj is None, f"{service}: consumes no stream, but a ScaledObject scales it")
            continue
        if obj is None:
            problems.add(f"{service}: consumes {sorted({c['stream'] for c in entry['consumes']})}, but no ScaledObject scales it")
            continue
        watched = set()
        for trigger in obj["spec"]["triggers"]:
            if trigger["type"] not in REDIS_TRIGGERS:
                continue
            meta = trigger["metadata"]
            name = f"{service}: trigger {trigger.get('name', '?')}"
            watched.add((meta.get("stream"), meta.get("consumerGroup")))
            problems.check(trigger["type"] == want_type, f"{name} is {trigger['type']}, the Redis is {'a cluster' if cluster else 'one server'}")
            problems.check(REDIS_TRIGGERS[trigger["type"]] in meta, f"{name}: no {REDIS_TRIGGERS[trigger['type']]}")
            problems.check("lagCount" in meta, f"{name} does not scale on the group's lag")
            problems.check("pendingEntriesCount" not in meta, f"{name} scales on pending entries, which stay near 0 under a backlog")
        for key, group in sorted(watched - expected):
            problems.add(f"{service}: watches group {group} on {key}, which ratemesh does not consume (NOGROUP)")
        for key, group in sorted(expected - watched):
            problems.add(f"{service}: group {group} on {key} has no trigger")
    for service in scaled:
        problems.add(f"ScaledObject for {service}, which ratemesh streams does not list")
    return problems.finish(f"{rendered}: KEDA triggers match `ratemesh streams` (prefix {prefix}, {partitions} partitions{', cluster' if cluster else ''})")


def ratemesh_containers(docs: list[dict]) -> list[tuple[str, dict]]:
    return [
        (component(d), d["spec"]["template"]["spec"]["containers"][0])
        for d in docs
        if d["kind"] == "Deployment" and component(d) in SERVICES
    ]


def cmd_prestop(rendered: str, kube: str, seconds: str, mode: str) -> int:
    problems = Problems()
    version = tuple(int(part) for part in kube.split(".")[:2])
    pause = int(seconds)
    containers = ratemesh_containers(load_docs(rendered))
    problems.check(len(containers) == len(SERVICES), f"expected {len(SERVICES)} ratemesh Deployments")
    for service, c in containers:
        hook = (c.get("lifecycle") or {}).get("preStop")
        if pause == 0:
            problems.check(hook is None, f"{service}: a preStop hook without a pause asked for: {hook}")
        elif version >= SLEEP_ACTION_FROM and mode != "exec":
            problems.check(hook == {"sleep": {"seconds": pause}}, f"{service}: on {kube} expected the sleep action for {pause}s, got {hook}")
        elif mode in ("exec", "auto-exec"):
            command = (hook or {}).get("exec", {}).get("command") or []
            problems.check(command[-1:] == [str(pause)] and len(command) >= 2, f"{service}: expected an exec hook sleeping {pause}s, got {hook}")
        else:
            # Before 1.30 the sleep action is rejected (1.27, 1.28) or silently dropped (1.29).
            problems.check(hook is None, f"{service}: on {kube} the sleep action is not available, got {hook}")
    return problems.finish(f"{rendered}: preStop pause of {pause}s on Kubernetes {kube} ({mode})")


def cmd_ingress(rendered: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    services = {component(d): d for d in docs if d["kind"] == "Service"}
    policies = {component(d): d for d in docs if d["kind"] == "NetworkPolicy"}
    for ing in ingresses:
        name = ident(ing)
        spec = ing["spec"]
        ingest = services.get("ingest")
        if ingest is None:
            problems.add(f"{name}: no ingest Service to route to")
            continue
        http_ports = {p["name"] for p in ingest["spec"]["ports"]}
        tls_hosts = {h for t in spec.get("tls") or [] for h in t.get("hosts") or [] if t.get("secretName")}
        rules = spec.get("rules") or []
        problems.check(bool(rules), f"{name}: no rules")
        for rule in rules:
            host = rule.get("host")
            problems.check(bool(host), f"{name}: a rule without a host")
            problems.check(host in tls_hosts, f"{name}: {host} is not served over TLS with a certificate Secret")
            for path in (rule.get("http") or {}).get("paths") or []:
                backend = path["backend"]["service"]
                problems.check(backend["name"] == ingest["metadata"]["name"], f"{name}: routes to {backend['name']}, not ingest")
                port = backend["port"].get("name")
                problems.check(port == "http" and port in http_ports, f"{name}: routes to port {backend['port']}, not ingest's webhook port")
        policy = policies.get("ingest")
        if policy is not None:
            webhook_rules = [r for r in policy["spec"].get("ingress", []) if any(p.get("port") == "http" for p in r.get("ports", []))]
            open_to_all = any(not r.get("from") for r in webhook_rules)
            in_cluster = any("podSelector" in peer or "namespaceSelector" in peer for r in webhook_rules for peer in r.get("from") or [])
            problems.check(open_to_all or in_cluster, f"{name}: ingest's network policy admits only address blocks to the webhook port, so the Ingress controller's pods cannot reach it")
    return problems.finish(f"{rendered}: {len(ingresses)} webhook Ingress")


def quantity_bytes(text: str, units: dict[str, int], what: str) -> int:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(text).strip())
    if not match or match.group(2) not in units:
        raise SystemExit(f"FAIL cannot read {what} {text!r}")
    return int(float(match.group(1)) * units[match.group(2)])


def secret_ref(env: dict[str, dict], name: str) -> tuple[str, str] | None:
    ref = ((env.get(name) or {}).get("valueFrom") or {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def cmd_redis(rendered: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    sets = [d for d in docs if d["kind"] == "StatefulSet" and component(d) == "redis"]
    if not sets:
        return problems.finish(f"{rendered}: no bundled Redis")
    redis = sets[0]
    fullname = redis["metadata"]["name"]
    pod = redis["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}

    # Memory: maxmemory below the container's limit, and nothing ever evicted.
    conf_maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == fullname]
    conf = (conf_maps[0]["data"].get("redis.conf", "") if conf_maps else "")
    directives = {}
    for line in conf.splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            directives[words[0]] = words[1:]
    limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    problems.check(limit is not None, "redis: no memory limit on the container")
    maxmemory = directives.get("maxmemory")
    problems.check(maxmemory is not None, "redis: redis.conf sets no maxmemory, so Redis grows until the kernel OOM-kills it")
    if limit is not None and maxmemory:
        limit_bytes = quantity_bytes(limit, K8S_UNITS, "memory limit")
        max_bytes = quantity_bytes(maxmemory[0].lower(), REDIS_UNITS, "maxmemory")
        problems.check(0 < max_bytes < limit_bytes, f"redis: maxmemory {maxmemory[0]} ({max_bytes} B) is not below the memory limit {limit} ({limit_bytes} B)")
    problems.check(directives.get("maxmemory-policy") == ["noeviction"], f"redis: maxmemory-policy must be noeviction (stream entries must never be evicted), is {directives.get('maxmemory-policy')}")

    # Password: requirepass from a Secret, used by the probe, ratemesh and KEDA.
    args = c.get("args") or []
    auth = None
    if "--requirepass" in args and args.index("--requirepass") + 1 < len(args):
        ref = ENV_REF.fullmatch(args[args.index("--requirepass") + 1])
        auth = secret_ref(env, ref.group(1)) if ref else None
    problems.check("requirepass" not in directives, "redis: the password is in the ConfigMap")
    problems.check(auth is not None, f"redis: no --requirepass $(VAR) from a Secret in the container's args {args}")
    if auth is None:
        return problems.finish(f"{rendered}: bundled Redis")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    if auth[0] in secrets:
        data = {**(secrets[auth[0]].get("data") or {}), **(secrets[auth[0]].get("stringData") or {})}
        problems.check(len(str(data.get(auth[1], ""))) >= 16, f"redis: Secret {auth[0]} has no password of 16+ characters under {auth[1]}")
    problems.check(secret_ref(env, "REDISCLI_AUTH") == auth, "redis: the readiness probe's redis-cli does not authenticate (REDISCLI_AUTH)")
    service = next((d["metadata"]["name"] for d in docs if d["kind"] == "Service" and component(d) == "redis"), fullname)
    for name, container in ratemesh_containers(docs):
        order = [e["name"] for e in container.get("env", [])]
        cenv = {e["name"]: e for e in container.get("env", [])}
        url = (cenv.get("RATEMESH__REDIS__URL") or {}).get("value", "")
        ref = re.fullmatch(rf"redis://:\$\(([A-Za-z_][A-Za-z0-9_]*)\)@{re.escape(service)}:6379(/[0-9]+)?", url)
        if ref is None:
            problems.add(f"{name}: RATEMESH__REDIS__URL {url!r} does not carry the password as redis://:$(VAR)@{service}:6379")
            continue
        var = ref.group(1)
        problems.check(secret_ref(cenv, var) == auth, f"{name}: {var} is not the Redis password Secret {auth}")
        problems.check(var in order and order.index(var) < order.index("RATEMESH__REDIS__URL"), f"{name}: {var} must come before RATEMESH__REDIS__URL to be expanded")
    auths = {d["metadata"]["name"]: d for d in docs if d["kind"] == "TriggerAuthentication"}
    for obj in (d for d in docs if d["kind"] == "ScaledObject"):
        for trigger in obj["spec"]["triggers"]:
            if trigger["type"] not in REDIS_TRIGGERS:
                continue
            ta = auths.get((trigger.get("authenticationRef") or {}).get("name"))
            refs = {(r["name"], r["key"]) for r in (ta or {}).get("spec", {}).get("secretTargetRef", []) if r.get("parameter") == "password"}
            problems.check(auth in refs, f"{ident(obj)}: trigger {trigger.get('name')} has no password for the bundled Redis")
    return problems.finish(f"{rendered}: bundled Redis: maxmemory {maxmemory[0] if maxmemory else '-'} under limit {limit}, noeviction, password from Secret {auth[0]}")


def cmd_tls(rendered: str, secret: str, ca: str | None) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    deployments = {component(d): d for d in docs if d["kind"] == "Deployment" and component(d) in SERVICES}
    problems.check(bool(deployments), "no ratemesh Deployment rendered")
    for service, doc in deployments.items():
        pod = doc["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        readiness = container["readinessProbe"]
        if secret == "-":
            problems.check(not any(k.startswith("RATEMESH__SERVER__TLS") for k in env), f"{service}: TLS settings without tls.enabled")
            problems.check("grpc" in readiness, f"{service}: readiness is not the gRPC probe")
            continue
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}

        def mounted_from(path: str | None, what: str) -> str | None:
            # The Secret whose volume is mounted (read-only) at the file's directory.
            if not path:
                problems.add(f"{service}: no {what} file set")
                return None
            mount = mounts.get(path.rsplit("/", 1)[0])
            if mount is None:
                problems.add(f"{service}: {what} {path} is not in a mounted volume")
                return None
            problems.check(mount.get("readOnly") is True, f"{service}: {what} volume is writable")
            return volumes.get(mount["name"], {}).get("secret", {}).get("secretName")

        for key, what in (("RATEMESH__SERVER__TLS_CERT_FILE", "certificate"), ("RATEMESH__SERVER__TLS_KEY_FILE", "key")):
            source = mounted_from(env.get(key), what)
            problems.check(source == secret, f"{service}: the {what} comes from {source}, not the Secret {secret}")
        if ca:
            source = mounted_from(env.get("RATEMESH__SERVER__TLS_CLIENT_CA_FILE"), "client CA")
            problems.check(source == ca, f"{service}: the client CA comes from {source}, not the Secret {ca}")
        else:
            problems.check("RATEMESH__SERVER__TLS_CLIENT_CA_FILE" not in env, f"{service}: a client CA without tls.clientCASecret")
        http = readiness.get("httpGet", {})
        problems.check(http.get("path") == "/readyz" and http.get("port") == "admin",
                       f"{service}: with TLS, readiness must be the admin port's /readyz, not {readiness}")
        for probe in ("livenessProbe", "startupProbe"):
            problems.check("grpc" not in container.get(probe, {}), f"{service}: {probe} is a gRPC probe, which has no TLS")
    return problems.finish(f"{rendered}: TLS {'off' if secret == '-' else 'from ' + secret} on {len(deployments)} services")


def cmd_alerts(rendered: str, rules_file: str) -> int:
    problems = Problems()
    rules = [d for d in load_docs(rendered) if d["kind"] == "PrometheusRule"]
    expected = yaml.safe_load(pathlib.Path(rules_file).read_text(encoding="utf-8"))
    problems.check(len(rules) == 1, f"expected one PrometheusRule, rendered {len(rules)}")
    for rule in rules:
        problems.check(rule["spec"] == expected, f"{ident(rule)}: spec differs from {rules_file}")
        alerts = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
        problems.check(len(alerts) >= 5, f"{ident(rule)}: only {len(alerts)} alerts")
    return problems.finish(f"{rendered}: PrometheusRule has the rules of {rules_file}")


def cmd_compose(path: str) -> int:
    problems = Problems()
    base = pathlib.Path(path).resolve().parent
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or {}
    for needed in ("redis", "redis-exporter", "otel-collector", "jaeger", "prometheus", "grafana", *SERVICES):
        problems.check(needed in services, f"service {needed} missing")
    for name, svc in services.items():
        problems.check(bool(svc.get("image") or svc.get("build")), f"{name}: needs image or build")
        for dep in svc.get("depends_on") or {}:
            problems.check(dep in services, f"{name}: depends_on unknown service {dep}")
        for volume in svc.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                problems.check((base / source).exists(), f"{name}: mounts {source}, which does not exist")
            elif source and not source.startswith("/"):
                problems.check(source in (doc.get("volumes") or {}), f"{name}: named volume {source} is not declared")
    for service in SERVICES:
        svc = services.get(service) or {}
        command = svc.get("command") or []
        problems.check(command[:2] == ["serve", service], f"{service}: command must be serve {service}, is {command}")
        env = svc.get("environment") or {}
        problems.check(str(env.get("RATEMESH__REDIS__URL", "")).startswith("redis://redis"), f"{service}: not on the compose Redis")
        problems.check("otel-collector" in str(env.get("RATEMESH__TELEMETRY__OTLP_ENDPOINT", "")), f"{service}: traces do not go to the collector")
    redis_cmd = " ".join(map(str, (services.get("redis") or {}).get("command") or []))
    problems.check("--appendonly yes" in redis_cmd, "redis: AOF must be on (--appendonly yes)")
    prom = yaml.safe_load((base / "prometheus.yml").read_text(encoding="utf-8"))
    targets = {t for job in prom.get("scrape_configs", []) for sc in job.get("static_configs", []) for t in sc.get("targets", [])}
    for target in [f"{service}:9090" for service in SERVICES] + ["redis-exporter:9121"]:
        problems.check(target in targets, f"prometheus.yml does not scrape {target}")
    otel = yaml.safe_load((base / "otel-collector.yaml").read_text(encoding="utf-8"))
    pipelines = (otel.get("service") or {}).get("pipelines") or {}
    problems.check("traces" in pipelines, "otel-collector.yaml has no traces pipeline")
    for pipeline in pipelines.values():
        for part in ("receivers", "processors", "exporters"):
            for name in pipeline.get(part, []):
                problems.check(name in (otel.get(part) or {}), f"otel-collector.yaml: {part[:-1]} {name} used but not defined")
    dashboard = json.loads((base / "grafana" / "ratemesh.json").read_text(encoding="utf-8"))
    problems.check(len(dashboard.get("panels", [])) >= 6, "grafana dashboard has fewer than six panels")
    # Every ratemesh metric the dashboard queries must be one the code records.
    recorded = set()
    for source in (base.parent / "services").rglob("*.rs"):
        recorded.update(re.findall(r'"(ratemesh_[a-z0-9_]+)"', source.read_text(encoding="utf-8")))
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            for name in re.findall(r"\b(ratemesh_[a-z0-9_]+)", target.get("expr", "")):
                base_name = re.sub(r"_(bucket|sum|count)$", "", name)
                problems.check(
                    name in recorded or base_name in recorded,
                    f"dashboard panel '{panel.get('title')}' queries {name}, which no code under services/ records",
                )
    return problems.finish(f"{path}: compose structure, prometheus, collector and dashboard")


ARCHIVE_DIR = "/var/lib/ratemesh/archive"


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_values(deployment: dict) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def netpol_allows(policy: dict, port: str | int, labels: dict | None = None) -> bool:
    """Whether an ingress rule of `policy` lets traffic in on `port` (from pods with `labels`
    when given; a rule without `from` lets every source in)."""
    for rule in policy["spec"].get("ingress", []):
        if not any(p.get("port") == port for p in rule.get("ports", [])):
            continue
        peers = rule.get("from")
        if peers is None or labels is None:
            return True
        if any(selects((peer.get("podSelector") or {}).get("matchLabels", {}), labels) for peer in peers):
            return True
    return False


def cmd_console(rendered: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    deployments = {component(d): d for d in docs if d["kind"] == "Deployment"}
    services = {component(d): d for d in docs if d["kind"] == "Service"}
    policies = {component(d): d for d in docs if d["kind"] == "NetworkPolicy"}
    rates = deployments.get("rates")
    if rates is None:
        raise SystemExit(f"FAIL {rendered}: no rates Deployment")
    env = env_values(rates)
    console = services.get("console")
    if "RATEMESH__SERVER__CONSOLE_ADDR" not in env:
        problems.check(console is None, "a console Service without the console in the rates pods")
        for comp, dep in deployments.items():
            problems.check(
                "RATEMESH__SERVER__CONSOLE_ADDR" not in env_values(dep), f"{comp}: runs a console"
            )
        return problems.finish(f"{rendered}: no console")
    tls = "RATEMESH__SERVER__TLS_CERT_FILE" in env
    scheme = "https" if tls else "http"
    port = int(env["RATEMESH__SERVER__CONSOLE_ADDR"].rsplit(":", 1)[1])
    container = rates["spec"]["template"]["spec"]["containers"][0]
    problems.check(
        {"name": "console", "containerPort": port, "protocol": "TCP"} in container.get("ports", []),
        f"rates: no container port `console` {port}",
    )
    grpc_port = next(p["port"] for p in services["rates"]["spec"]["ports"] if p["name"] == "grpc")
    for callee in ("incentives", "notifier"):
        key = f"RATEMESH__CONSOLE__{callee.upper()}_ENDPOINT"
        name = services[callee]["metadata"]["name"]
        endpoint = env.get(key, "")
        problems.check(
            re.fullmatch(rf"{scheme}://{re.escape(name)}(\.[a-z0-9-]+)*(\.svc)?:{grpc_port}", endpoint) is not None,
            f"rates: {key}={endpoint!r} is not {scheme}:// the {name} Service's gRPC port",
        )
    if tls:
        problems.check(
            env.get("RATEMESH__CONSOLE__RATES_ENDPOINT", "").startswith("https://"),
            "rates: with TLS the console needs an https:// rates endpoint",
        )
    archive = "ingest-archive" in deployments
    policy = env.get("RATEMESH__CONSOLE__POLICY_ENDPOINT", "")
    if archive:
        name = services["ingest-archive"]["metadata"]["name"]
        problems.check(
            re.fullmatch(rf"{scheme}://{re.escape(name)}(\.[a-z0-9-]+)*(\.svc)?:{grpc_port}", policy) is not None,
            f"rates: RATEMESH__CONSOLE__POLICY_ENDPOINT={policy!r} is not {scheme}:// the {name} Service's gRPC port",
        )
    else:
        problems.check(
            policy.startswith("https://") if tls else policy == "",
            f"rates: without the archive RATEMESH__CONSOLE__POLICY_ENDPOINT={policy!r} "
            + ("is not https://" if tls else "is set"),
        )
    pod_labels = rates["spec"]["template"]["metadata"]["labels"]
    if console is None:
        problems.add("no console Service")
    else:
        spec = console["spec"]
        problems.check(selects(spec.get("selector", {}), pod_labels), "the console Service does not select the rates pods")
        problems.check(spec.get("sessionAffinity") == "ClientIP", "the console Service has no ClientIP session affinity")
        problems.check(
            [p.get("targetPort") for p in spec.get("ports", [])] == ["console"],
            "the console Service does not route to the `console` port only",
        )
    if policies:
        problems.check(netpol_allows(policies["rates"], "console"), "rates: the network policy keeps browsers out of the console")
        callees = ("rates", "incentives", "notifier") + (("ingest-archive",) if archive else ())
        for callee in callees:
            problems.check(
                netpol_allows(policies[callee], "grpc", pod_labels),
                f"{callee}: the network policy keeps the console's gateway out",
            )
        egress_ok = False
        for rule in policies["rates"]["spec"].get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            targets = [(peer.get("podSelector") or {}).get("matchLabels", {}) for peer in rule.get("to", [])]
            if grpc_port in ports and all(
                any(selects(t, deployments[c]["spec"]["template"]["metadata"]["labels"]) for t in targets)
                for c in callees
            ):
                egress_ok = True
        problems.check(
            egress_ok, f"rates: the network policy keeps the console's gateway from one of {', '.join(callees)}"
        )
    return problems.finish(f"{rendered}: console in the rates pods ({scheme})")


def cmd_archive(rendered: str) -> int:
    problems = Problems()
    docs = load_docs(rendered)
    deployments = {component(d): d for d in docs if d["kind"] == "Deployment"}
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    for comp, dep in deployments.items():
        if comp != "ingest-archive":
            problems.check(
                "RATEMESH__INGEST__ARCHIVE__DIR" not in env_values(dep), f"{comp}: sets ingest.archive.dir"
            )
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            problems.check(
                "RATEMESH__INGEST__ARCHIVE__DIR" not in (doc.get("data") or {}),
                f"{ident(doc)}: sets ingest.archive.dir for every pod",
            )
    archive = deployments.get("ingest-archive")
    if archive is None:
        problems.check(not claims, "an archive claim without the ingest-archive Deployment")
        return problems.finish(f"{rendered}: no archive")
    spec = archive["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    problems.check(spec.get("replicas") == 1, "ingest-archive: not exactly one replica")
    problems.check(spec.get("strategy", {}).get("type") == "Recreate", "ingest-archive: strategy is not Recreate")
    problems.check(container.get("args") == ["serve", "ingest"], "ingest-archive: does not run `serve ingest`")
    problems.check(
        env_values(archive).get("RATEMESH__INGEST__ARCHIVE__DIR") == ARCHIVE_DIR,
        f"ingest-archive: ingest.archive.dir is not {ARCHIVE_DIR}",
    )
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = [n for n, m in mounts.items() if m["mountPath"] == ARCHIVE_DIR and not m.get("readOnly")]
    claim = mounted and (volumes.get(mounted[0], {}).get("persistentVolumeClaim") or {}).get("claimName")
    problems.check(bool(claim) and claim in claims, f"ingest-archive: no rendered claim mounted writable at {ARCHIVE_DIR}")
    pod_labels = spec["template"]["metadata"]["labels"]
    for doc in docs:
        if doc["kind"] == "Service" and selects(doc["spec"].get("selector", {}), pod_labels):
            ports = {p["name"] for p in doc["spec"].get("ports", [])}
            problems.check(
                component(doc) == "ingest-archive" and ports <= {"grpc", "admin"},
                f"{ident(doc)} sends ERP traffic to the archiving pod ({sorted(ports)})",
            )
    for doc in docs:
        if doc["kind"] == "NetworkPolicy" and component(doc) == "ingest-archive":
            problems.check(
                not netpol_allows(doc, "http"), "ingest-archive: the network policy lets webhooks in"
            )
    return problems.finish(f"{rendered}: archive in one ingest-archive pod")


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "split":
        return cmd_split_all(argv[1:])
    if len(argv) in (4, 5) and argv[0] == "prestop" and (argv[4:] or ["auto"])[0] in ("auto", "auto-exec", "exec"):
        return cmd_prestop(argv[1], argv[2], argv[3], argv[4] if len(argv) == 5 else "auto")
    if len(argv) == 2 and argv[0] == "ingress":
        return cmd_ingress(argv[1])
    if len(argv) == 2 and argv[0] == "redis":
        return cmd_redis(argv[1])
    if len(argv) == 2 and argv[0] == "production":
        return cmd_production(argv[1])
    if len(argv) == 3 and argv[0] == "streams":
        return cmd_streams(argv[1], argv[2])
    if len(argv) >= 2 and argv[0] == "expect":
        return cmd_expect(argv[1], argv[2:])
    if len(argv) in (3, 4) and argv[0] == "tls":
        return cmd_tls(argv[1], argv[2], argv[3] if len(argv) == 4 else None)
    if len(argv) == 3 and argv[0] == "alerts":
        return cmd_alerts(argv[1], argv[2])
    if len(argv) == 2 and argv[0] == "console":
        return cmd_console(argv[1])
    if len(argv) == 2 and argv[0] == "archive":
        return cmd_archive(argv[1])
    if len(argv) == 2 and argv[0] == "compose":
        return cmd_compose(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
