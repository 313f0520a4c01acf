#!/usr/bin/env python3
"""Cross-file consistency of the deployment artefacts.

usage: check_consistency.py [--repo DIR]

Schema validators check each manifest alone; this checks that the pieces fit
together and honour the engine's contracts (ports 8080/9898, /ready and
/health, state in /var/lib/sluice, uid 10001, SIGTERM drain):

  Kubernetes (every overlay under deploy/k8s/overlays, rendered by render.py)
    - every container runs restricted: non-root, no privilege escalation,
      read-only root filesystem, ALL capabilities dropped, seccomp
      RuntimeDefault, resource requests and a memory limit;
    - the StatefulSet: governing headless Service, selector, grace period
      45 s, ports http 8080 / admin 9898, startup/readiness probes on /ready
      and liveness on /health (port admin), the state volume claim mounted at
      /var/lib/sluice, uid/fsGroup 10001, scrape annotations on the admin
      port, the pipeline ConfigMap mounted where `args` expects it;
    - every Secret key the pods read exists (in the overlay, or for
      out-of-band Secrets in the overlay's secret.example.yaml);
    - the pipeline in the ConfigMap: admin address and HTTP source port match
      the container ports, state dir matches the volume mount, every
      ${VAR} is set in the container environment, every listener on 0.0.0.0
      has an auth_token_env the container sets;
    - Services and the PodDisruptionBudget select pods, named target ports
      exist; the ServiceMonitor selects the metrics Service, its port exists,
      its jobLabel yields job="sluice" (what the alerts expect) and it sends
      the admin token from the Secret key the container reads it from.
    - the workers (docs/scaling.md): podManagementPolicy Parallel; the
      container port `exchange` 7070, also a port of the headless Service;
      SLUICE_WORKERS equal to `replicas` (one value: the kustomize
      replacement) and no SLUICE_WORKER_ID (the id is the pod's ordinal);
      the pipeline's [cluster] listens on 0.0.0.0:7070 and its `peers` is
      `<StatefulSet>-{worker}.<headless Service>:7070`.
  Dockerfile: uid 10001, VOLUME /var/lib/sluice, EXPOSE 8080 9898 7070,
    ENTRYPOINT + CMD = `sluice run /etc/sluice/pipeline.toml`, the same
    arguments as the StatefulSet.
  Compose + Prometheus + Grafana: the sluice service (image build, state
    volume, ports, examples mount, hardening), the scrape job `sluice` on
    sluice:9898, the Grafana datasource uid and dashboard path; and, once
    examples/*.toml exist, every ${VAR} they use is provided by compose.
  Alerts: every alert has a severity, a runbook annotation pointing at an
    existing section of docs/deploy.md, and a unit test in alerts.test.yml.

Exit 1 listing every problem found.
"""
import argparse
import glob
import json
import os
import re
import shlex
import sys
import tomllib

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.join(HERE, "k8s"))
import render  # noqa: E402  (deploy/k8s/render.py)

UID = 10001
HTTP_PORT, ADMIN_PORT, EXCHANGE_PORT = 8080, 9898, 7070
STATE_DIR = "/var/lib/sluice"
PIPELINE_PATH = "/etc/sluice/pipeline.toml"
ARGS = ["run", PIPELINE_PATH]
JOB = "sluice"
ENV_REF = re.compile(r"\$\{([A-Za-z0-9_]+)(:-[^}]*)?\}")
# Set by sluice itself for the file it loads (the worker in effect), not
# read from the environment as such.
SLUICE_PROVIDED = {"SLUICE_WORKER_ID", "SLUICE_WORKERS"}


class Checker:
    def __init__(self):
        self.problems = []
        self.checks = 0

    def expect(self, condition, message):
        self.checks += 1
        if not condition:
            self.problems.append(message)
        return condition


def labels_match(selector, labels):
    return bool(selector) and all((labels or {}).get(k) == v for k, v in selector.items())


def port_of(address):
    return int(str(address).rsplit(":", 1)[1])


def env_refs(text):
    """${VAR} names without a default, outside comments."""
    names = set()
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        for name, default in ENV_REF.findall(code):
            if not default:
                names.add(name)
    return names


# --------------------------------------------------------------------------
# Kubernetes


def check_pod_security(c, where, pod_spec):
    pod_sc = pod_spec.get("securityContext") or {}
    for container in (pod_spec.get("containers") or []) + (pod_spec.get("initContainers") or []):
        sc = container.get("securityContext") or {}
        w = f"{where} container {container.get('name')}"
        c.expect(sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{w}: runAsNonRoot is not true")
        c.expect(sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation is not false")
        c.expect(sc.get("readOnlyRootFilesystem") is True, f"{w}: readOnlyRootFilesystem is not true")
        c.expect("ALL" in ((sc.get("capabilities") or {}).get("drop") or []), f"{w}: capabilities do not drop ALL")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        c.expect(seccomp == "RuntimeDefault", f"{w}: seccompProfile is not RuntimeDefault")
        resources = container.get("resources") or {}
        c.expect(bool((resources.get("requests") or {}).get("cpu")), f"{w}: no CPU request")
        c.expect(bool((resources.get("requests") or {}).get("memory")), f"{w}: no memory request")
        c.expect(bool((resources.get("limits") or {}).get("memory")), f"{w}: no memory limit")


def check_overlay(c, repo, overlay, dockerfile):
    name = os.path.relpath(overlay, repo)
    objects = render.render(overlay)
    by_kind = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)

    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "Pod")]
    pods = {}  # workload name -> (template labels, pod spec)
    for w in workloads:
        spec = next(render.pod_specs(w))
        labels = ((w.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels", {})
        pods[f"{w['kind']}/{w['metadata']['name']}"] = (labels, spec)
        check_pod_security(c, f"{name}: {w['kind']}/{w['metadata']['name']}", spec)
        selector = ((w.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if selector is not None:
            c.expect(labels_match(selector, labels), f"{name}: {w['metadata']['name']}: selector does not match its template")

    secrets = {s["metadata"]["name"]: s for s in by_kind.get("Secret", [])}
    example = os.path.join(overlay, "secret.example.yaml")
    if os.path.exists(example):
        for doc in render.load_yaml_documents(example):
            secrets.setdefault(doc["metadata"]["name"], doc)
    configmaps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}

    # Secret keys and ConfigMaps referenced by any pod.
    for wname, (_, spec) in pods.items():
        for container in spec.get("containers") or []:
            for env in container.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = secrets.get(ref["name"])
                    data = {**((secret or {}).get("data") or {}), **((secret or {}).get("stringData") or {})}
                    c.expect(ref["key"] in data,
                             f"{name}: {wname} reads {ref['name']}/{ref['key']}, which neither the overlay "
                             "nor its secret.example.yaml provides")
        for volume in spec.get("volumes") or []:
            if volume.get("configMap"):
                c.expect(volume["configMap"]["name"] in configmaps,
                         f"{name}: {wname} mounts missing ConfigMap {volume['configMap']['name']}")

    # The sluice StatefulSet.
    sts = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "sluice"]
    if not c.expect(len(sts) == 1, f"{name}: no StatefulSet sluice"):
        return
    sts = sts[0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    tlabels = spec["template"]["metadata"]["labels"]
    headless = services.get(spec.get("serviceName"))
    c.expect(headless is not None and headless["spec"].get("clusterIP") == "None",
             f"{name}: serviceName {spec.get('serviceName')} is not a headless Service of the overlay")
    c.expect(pod.get("terminationGracePeriodSeconds") == 45, f"{name}: terminationGracePeriodSeconds is not 45")
    psc = pod.get("securityContext") or {}
    c.expect(psc.get("runAsUser") == UID and psc.get("fsGroup") == UID,
             f"{name}: pod runAsUser/fsGroup are not {UID}")
    containers = [x for x in pod["containers"] if x["name"] == "sluice"]
    if not c.expect(len(containers) == 1, f"{name}: no container sluice"):
        return
    ctr = containers[0]
    ports = {p.get("name"): p["containerPort"] for p in ctr.get("ports") or []}
    c.expect(ports.get("http") == HTTP_PORT, f"{name}: container port http is not {HTTP_PORT}")
    c.expect(ports.get("admin") == ADMIN_PORT, f"{name}: container port admin is not {ADMIN_PORT}")
    for probe, path in (("startupProbe", "/ready"), ("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = (ctr.get(probe) or {}).get("httpGet") or {}
        c.expect(get.get("path") == path and get.get("port") in ("admin", ADMIN_PORT),
                 f"{name}: {probe} is not GET {path} on the admin port")
    c.expect(ctr.get("args") == ARGS, f"{name}: container args {ctr.get('args')} != {ARGS}")
    mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts") or []}
    claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []]
    c.expect(mounts.get(STATE_DIR) in claims, f"{name}: {STATE_DIR} is not a volumeClaimTemplate mount")
    annotations = spec["template"]["metadata"].get("annotations") or {}
    c.expect(annotations.get("prometheus.io/scrape") == "true"
             and annotations.get("prometheus.io/port") == str(ADMIN_PORT)
             and annotations.get("prometheus.io/path") == "/metrics",
             f"{name}: prometheus.io annotations do not point at :{ADMIN_PORT}/metrics")

    # The pipeline mounted at /etc/sluice/pipeline.toml.
    pipeline_text = None
    config_dir = os.path.dirname(PIPELINE_PATH)
    volume_name = mounts.get(config_dir)
    volume = next((v for v in pod.get("volumes") or [] if v["name"] == volume_name), None)
    if c.expect(volume is not None and volume.get("configMap"), f"{name}: nothing mounted at {config_dir}"):
        cm = configmaps.get(volume["configMap"]["name"], {})
        items = volume["configMap"].get("items") or [{"key": k, "path": k} for k in cm.get("data", {})]
        key = next((i["key"] for i in items if i["path"] == os.path.basename(PIPELINE_PATH)), None)
        pipeline_text = (cm.get("data") or {}).get(key)
        c.expect(pipeline_text is not None, f"{name}: the ConfigMap provides no {PIPELINE_PATH}")
    pipeline_doc = None
    if pipeline_text is not None:
        pipeline_doc = check_pipeline(c, f"{name}: pipeline", pipeline_text, {e["name"] for e in ctr.get("env") or []},
                                      ports.get("admin"), ports.get("http"), mounts)
    check_workers(c, name, sts, ctr, ports, headless, pipeline_doc)
    # The Secret key the admin token comes from, if the pipeline has one.
    admin_token_var = ((pipeline_doc or {}).get("admin") or {}).get("auth_token_env")
    admin_token_ref = next(((e.get("valueFrom") or {}).get("secretKeyRef") for e in ctr.get("env") or []
                            if e["name"] == admin_token_var), None)

    # Services and the PDB select the pods; named target ports exist.
    for svc in services.values():
        selector = svc["spec"].get("selector") or {}
        matched = [(w, spec_) for w, (labels, spec_) in pods.items() if labels_match(selector, labels)]
        c.expect(bool(matched), f"{name}: Service {svc['metadata']['name']} selects no pods")
        for p in svc["spec"].get("ports") or []:
            target = p.get("targetPort", p["port"])
            if isinstance(target, str):
                for w, spec_ in matched:
                    names = {cp.get("name") for ct in spec_["containers"] for cp in ct.get("ports") or []}
                    c.expect(target in names, f"{name}: Service {svc['metadata']['name']} targetPort {target} not in {w}")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.expect(labels_match(pdb["spec"]["selector"].get("matchLabels"), tlabels),
                 f"{name}: PodDisruptionBudget {pdb['metadata']['name']} does not select the sluice pods")

    for sm in by_kind.get("ServiceMonitor", []):
        w = f"{name}: ServiceMonitor {sm['metadata']['name']}"
        c.expect(sm.get("apiVersion") == "monitoring.coreos.com/v1", f"{w}: apiVersion is not monitoring.coreos.com/v1")
        selected = [s for s in services.values()
                    if labels_match(sm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels"))]
        if not c.expect(len(selected) == 1, f"{w}: selects {len(selected)} Services, expected 1"):
            continue
        svc = selected[0]
        svc_ports = {p.get("name"): p for p in svc["spec"]["ports"]}
        for ep in sm["spec"].get("endpoints") or []:
            c.expect(ep.get("port") in svc_ports, f"{w}: endpoint port {ep.get('port')} not in Service {svc['metadata']['name']}")
            target = svc_ports.get(ep.get("port"), {}).get("targetPort")
            c.expect(target in ("admin", ADMIN_PORT), f"{w}: endpoint does not reach the admin port")
            c.expect(ep.get("path", "/metrics") == "/metrics", f"{w}: endpoint path is not /metrics")
            if admin_token_var:
                creds = ((ep.get("authorization") or {}).get("credentials")) or {}
                c.expect(admin_token_ref is not None
                         and {"name": creds.get("name"), "key": creds.get("key")} == {"name": admin_token_ref["name"], "key": admin_token_ref["key"]},
                         f"{w}: the admin server requires ${admin_token_var}, but the endpoint does not send "
                         f"the Secret key it comes from ({admin_token_ref})")
        job = (svc["metadata"].get("labels") or {}).get(sm["spec"].get("jobLabel"))
        c.expect(job == JOB, f"{w}: jobLabel yields job={job!r}, the alerts expect job=\"{JOB}\"")

    if dockerfile:
        c.expect(dockerfile["uid"] == UID, f"Dockerfile USER {dockerfile['uid']} != {UID}")
        c.expect(dockerfile["args"] == ["sluice"] + (ctr.get("args") or []),
                 f"Dockerfile ENTRYPOINT+CMD {dockerfile['args']} != sluice + the StatefulSet args")


def check_workers(c, name, sts, ctr, ports, headless, pipeline_doc):
    """N workers: one count for Kubernetes and sluice, the exchange port in
    the container, the headless Service and the pipeline's [cluster]."""
    spec = sts["spec"]
    c.expect(spec.get("podManagementPolicy") == "Parallel", f"{name}: podManagementPolicy is not Parallel")
    c.expect(ports.get("exchange") == EXCHANGE_PORT, f"{name}: container port exchange is not {EXCHANGE_PORT}")
    svc_ports = {p.get("name"): p for p in ((headless or {}).get("spec") or {}).get("ports") or []}
    exchange = svc_ports.get("exchange") or {}
    c.expect(exchange.get("port") == EXCHANGE_PORT and exchange.get("targetPort") in ("exchange", EXCHANGE_PORT),
             f"{name}: the headless Service has no port exchange {EXCHANGE_PORT} -> exchange")
    env = {e["name"]: e for e in ctr.get("env") or []}
    workers = (env.get("SLUICE_WORKERS") or {}).get("value")
    replicas = spec.get("replicas", 1)
    c.expect(isinstance(workers, str) and workers == str(replicas),
             f"{name}: SLUICE_WORKERS is {workers!r} but replicas is {replicas}: they must be one value "
             "(the kustomize `replacements` entry of the overlay)")
    c.expect("SLUICE_WORKER_ID" not in env,
             f"{name}: SLUICE_WORKER_ID is set: every pod would be the same worker (the id is the pod's ordinal)")
    cluster = (pipeline_doc or {}).get("cluster")
    if not c.expect(isinstance(cluster, dict), f"{name}: pipeline: no [cluster] section"):
        return
    c.expect(cluster.get("listen") == f"0.0.0.0:{EXCHANGE_PORT}",
             f"{name}: pipeline: [cluster] listen is {cluster.get('listen')!r}, not \"0.0.0.0:{EXCHANGE_PORT}\"")
    peers = f"{sts['metadata']['name']}-{{worker}}.{spec.get('serviceName')}:{EXCHANGE_PORT}"
    c.expect(cluster.get("peers") == peers,
             f"{name}: pipeline: [cluster] peers is {cluster.get('peers')!r}, the pods are {peers!r}")


def check_pipeline(c, where, text, env_names, admin_port, http_port, mounts):
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        c.expect(False, f"{where}: invalid TOML: {e}")
        return
    c.expect(port_of(doc.get("admin", {}).get("address", ":0")) == admin_port,
             f"{where}: [admin] address is not on port {admin_port}")
    c.expect(doc.get("state", {}).get("dir") == STATE_DIR and STATE_DIR in mounts,
             f"{where}: [state] dir is not the volume mounted at {STATE_DIR}")
    for src_name, src in (doc.get("sources") or {}).items():
        if src.get("type") == "http" and "address" in src:
            c.expect(port_of(src["address"]) == http_port,
                     f"{where}: source {src_name} listens on {src['address']}, the container port http is {http_port}")
    for var in sorted(env_refs(text) - SLUICE_PROVIDED):
        c.expect(var in env_names, f"{where}: ${{{var}}} is not set in the container environment")
    # Listeners open to the network require a token, read from a variable
    # the container has (docs/operations/tls-auth.md).
    listeners = [("[admin]", doc.get("admin") or {})]
    listeners += [(f"source {n}", src) for n, src in (doc.get("sources") or {}).items() if src.get("type") == "http"]
    for what, listener in listeners:
        if not str(listener.get("address", "")).startswith("0.0.0.0:"):
            continue
        var = listener.get("auth_token_env")
        c.expect(var is not None, f"{where}: {what} listens on {listener['address']} without auth_token_env")
        if var is not None:
            c.expect(var in env_names, f"{where}: {what} auth_token_env {var} is not set in the container environment")
    return doc


# --------------------------------------------------------------------------
# Dockerfile, compose, Prometheus, Grafana


def parse_dockerfile(path):
    """USER uid, VOLUMEs, EXPOSEd ports and ENTRYPOINT+CMD of the last stage."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"\\\n", " ", f.read())
    stage = re.split(r"(?mi)^FROM\s", text)[-1]
    out = {"uid": None, "volumes": [], "expose": set(), "entrypoint": [], "cmd": []}
    for line in stage.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "USER":
            out["uid"] = int(rest.split(":")[0])
        elif word == "VOLUME":
            out["volumes"] += json.loads(rest) if rest.startswith("[") else rest.split()
        elif word == "EXPOSE":
            out["expose"] |= {int(p.split("/")[0]) for p in rest.split()}
        elif word in ("ENTRYPOINT", "CMD"):
            out[word.lower()] = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    out["args"] = out["entrypoint"] + out["cmd"]
    return out


def check_dockerfile(c, d):
    c.expect(STATE_DIR in d["volumes"], f"Dockerfile: no VOLUME {STATE_DIR}")
    c.expect({HTTP_PORT, ADMIN_PORT, EXCHANGE_PORT} <= d["expose"],
             f"Dockerfile: EXPOSE lacks {HTTP_PORT}/{ADMIN_PORT}/{EXCHANGE_PORT}")
    c.expect(d["args"] == ["sluice"] + ARGS, f"Dockerfile: ENTRYPOINT+CMD {d['args']} != sluice {' '.join(ARGS)}")


def check_compose(c, repo):
    compose_dir = os.path.join(repo, "deploy", "compose")
    with open(os.path.join(compose_dir, "docker-compose.yml"), encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    s = services.get("sluice")
    if not c.expect(s is not None, "compose: no service sluice"):
        return
    c.expect((s.get("build") or {}).get("dockerfile") == "deploy/docker/Dockerfile"
             and os.path.normpath(os.path.join(compose_dir, s["build"]["context"])) == os.path.normpath(repo),
             "compose: sluice is not built from the repository root with deploy/docker/Dockerfile")
    volumes = s.get("volumes") or []
    c.expect(any(v.split(":")[1] == STATE_DIR and v.split(":")[0] in (compose.get("volumes") or {}) for v in volumes),
             f"compose: no named volume at {STATE_DIR}")
    examples_mount = next((v.split(":")[1] for v in volumes if v.split(":")[0] == "../../examples"), None)
    c.expect(examples_mount is not None, "compose: ../../examples is not mounted")
    command = s.get("command") or []
    c.expect(command[:1] == ["run"] and examples_mount is not None and str(command[1]).startswith(examples_mount + "/"),
             "compose: sluice does not run a pipeline from the examples mount")
    published = {int(str(p).rsplit(":", 1)[1]) for p in s.get("ports") or []}
    c.expect({HTTP_PORT, ADMIN_PORT} <= published, "compose: sluice does not publish 8080 and 9898")
    c.expect(s.get("read_only") is True and "ALL" in (s.get("cap_drop") or []),
             "compose: sluice is not read-only with ALL capabilities dropped")
    health = " ".join(map(str, (s.get("healthcheck") or {}).get("test") or []))
    c.expect(f"/{ADMIN_PORT}" in health and "/ready" in health, "compose: sluice healthcheck does not ask /ready on the admin port")
    for dep in s.get("depends_on") or {}:
        c.expect(dep in services, f"compose: sluice depends on unknown service {dep}")

    env = set((s.get("environment") or {}).keys())
    examples = sorted(glob.glob(os.path.join(repo, "examples", "*.toml")))
    for path in examples:
        with open(path, encoding="utf-8") as f:
            for var in sorted(env_refs(f.read()) - SLUICE_PROVIDED):
                c.expect(var in env, f"compose: examples/{os.path.basename(path)} uses ${{{var}}}, "
                                     "which the sluice service does not set")
    default = re.search(r":-([^}]+)\}", str(command[1]) if len(command) > 1 else "")
    if default and examples:
        c.expect(os.path.exists(os.path.join(repo, "examples", default.group(1))),
                 f"compose: default pipeline examples/{default.group(1)} does not exist")

    # Prometheus scrapes sluice:9898 as job "sluice"; Grafana finds it.
    prom = services.get("prometheus") or {}
    mounted = {v.split(":")[1]: v.split(":")[0] for v in prom.get("volumes") or [] if ":" in v}
    config_src = mounted.get("/etc/prometheus/prometheus.yml")
    if c.expect(config_src is not None, "compose: prometheus.yml is not mounted"):
        with open(os.path.normpath(os.path.join(compose_dir, config_src)), encoding="utf-8") as f:
            config = yaml.safe_load(f)
        jobs = {j["job_name"]: j for j in config.get("scrape_configs", [])}
        targets = [t for sc in (jobs.get(JOB) or {}).get("static_configs", []) for t in sc.get("targets", [])]
        c.expect(f"sluice:{ADMIN_PORT}" in targets, f"prometheus.yml: job {JOB} does not scrape sluice:{ADMIN_PORT}")
        for rule_file in config.get("rule_files", []):
            c.expect(f"/etc/prometheus/{rule_file}" in mounted, f"compose: rule file {rule_file} is not mounted")

    graf = services.get("grafana") or {}
    gmounts = {v.split(":")[1]: v.split(":")[0] for v in graf.get("volumes") or [] if ":" in v}
    with open(os.path.join(compose_dir, "grafana", "datasources.yml"), encoding="utf-8") as f:
        ds = yaml.safe_load(f)["datasources"][0]
    c.expect(ds.get("uid") == "prometheus" and ds.get("url") == "http://prometheus:9090",
             "grafana datasources.yml: not the compose Prometheus with uid prometheus")
    with open(os.path.join(compose_dir, "grafana", "dashboards.yml"), encoding="utf-8") as f:
        path = yaml.safe_load(f)["providers"][0]["options"]["path"]
    c.expect(os.path.normpath(os.path.join(compose_dir, gmounts.get(path, "-"))) == os.path.join(repo, "dashboards"),
             f"compose: dashboards/ is not mounted at the provider path {path}")


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def check_alerts(c, repo):
    prom_dir = os.path.join(repo, "dashboards", "prometheus")
    with open(os.path.join(prom_dir, "alerts.yml"), encoding="utf-8") as f:
        alerts = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"] if "alert" in r]
    with open(os.path.join(prom_dir, "alerts.test.yml"), encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    tested = {t["alertname"] for test in tests.get("tests", []) for t in test.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    docs = {}
    for doc in glob.glob(os.path.join(repo, "docs", "*.md")):
        with open(doc, encoding="utf-8") as f:
            docs[os.path.relpath(doc, repo)] = {github_anchor(m) for m in re.findall(r"(?m)^#+\s+(.*)$", f.read())}
    for rule in alerts:
        name = rule["alert"]
        c.expect((rule.get("labels") or {}).get("severity") in ("critical", "warning", "info"),
                 f"alerts.yml: {name} has no severity critical|warning|info")
        runbook = (rule.get("annotations") or {}).get("runbook", "")
        path, _, anchor = runbook.partition("#")
        c.expect(anchor in docs.get(path, set()), f"alerts.yml: {name} runbook {runbook!r} is not a section of the docs")
        c.expect(name in tested, f"alerts.test.yml: no test in which {name} fires")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=os.path.dirname(HERE))
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    c = Checker()
    try:
        dockerfile = parse_dockerfile(os.path.join(repo, "deploy", "docker", "Dockerfile"))
        check_dockerfile(c, dockerfile)
        overlays = sorted(glob.glob(os.path.join(repo, "deploy", "k8s", "overlays", "*", "")))
        c.expect(bool(overlays), "no overlays under deploy/k8s/overlays")
        for overlay in overlays:
            check_overlay(c, repo, overlay.rstrip("/"), dockerfile)
        check_compose(c, repo)
        check_alerts(c, repo)
    except (OSError, KeyError, ValueError, yaml.YAMLError, render.RenderError) as e:
        c.expect(False, f"cannot check: {type(e).__name__}: {e}")
    for p in c.problems:
        print(p, file=sys.stderr)
    print(f"check_consistency.py: {c.checks} checks, {len(c.problems)} problem(s)")
    return 1 if c.problems else 0


if __name__ == "__main__":
    sys.exit(main())
