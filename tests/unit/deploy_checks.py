"""The checks of configs/deploy/ (README, "Deploy") that
tests/unit/test_deploy_manifests.py runs on the files and on broken copies of
them: Kubernetes objects against the schemas of K8S_VERSION (kubernetes-validate,
offline, strict), the RayCluster against KubeRay's CRD schema and its pod
templates as core/v1, compose.yaml as ``docker compose config`` would check it,
the engine's probes against the routes it serves. Each returns the list of what
is wrong (empty: fine)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import yaml

from engine.http.access import Public
from engine.http.health import ROUTES
from engine.raybox import RAY_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "configs" / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests are meant for; its schemas ship with kubernetes-validate.
K8S_VERSION = "1.33.0"
# The RayCluster CRD's schema of the KubeRay release the manifest is written for (see its $comment).
# Names whose values are secret wherever they appear (env variables, ConfigMap keys).
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEYS?$|CREDENTIAL|DATABASE_URL|REDIS_URL", re.I)
SECRET_FLAGS = {"--requirepass"}  # command-line flags whose value is secret


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not name.endswith("_MODE")  # RAY_AUTH_MODE says "token", not one


PLACEHOLDER = "placeholder-value-0123456789abcdef"  # stands for a Secret's value when settings are loaded


def documents(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: every document must be a mapping"
    return docs


def manifests() -> dict[str, list[dict]]:
    return {p.name: documents(p) for p in sorted(K8S.glob("*.yaml"))}


def one(kind: str, docs: list[dict] | None = None) -> dict:
    found = [d for d in (docs if docs is not None else [d for ds in manifests().values() for d in ds])
             if d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def is_built_in(doc: dict) -> bool:
    group = doc.get("apiVersion", "").rpartition("/")[0]
    return "." not in group or group.endswith(".k8s.io")


def k8s_errors(doc: dict) -> list[str]:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        return [f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {path}: {e.message}"]
    return []


def as_pod_template(name: str, template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": template}


# The KubeRay ray.io/v1 fields (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec, AuthOptions) as of
# v1.7: a field outside them is a typo the operator would refuse (strict field validation)
SPEC_FIELDS = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
               "headServiceAnnotations", "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec",
               "rayVersion", "workerGroupSpecs"}
HEAD_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_FIELDS = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                 "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
AUTH_FIELDS = {"mode", "secretName"}
UPSCALING_MODES = {"Default", "Aggressive", "Conservative"}


def kuberay_errors(rc: dict) -> list[str]:
    """Fields KubeRay does not know, at the levels our manifest fills."""
    spec = rc.get("spec", {})
    unknown = [f"spec.{k}" for k in spec if k not in SPEC_FIELDS]
    unknown += [f"spec.headGroupSpec.{k}" for k in spec.get("headGroupSpec", {}) if k not in HEAD_FIELDS]
    unknown += [f"spec.workerGroupSpecs[{i}].{k}" for i, g in enumerate(spec.get("workerGroupSpecs", []))
                for k in g if k not in WORKER_FIELDS]
    unknown += [f"spec.authOptions.{k}" for k in spec.get("authOptions", {}) if k not in AUTH_FIELDS]
    errors = [f"RayCluster: {u}: not a KubeRay field" for u in unknown]
    mode = spec.get("autoscalerOptions", {}).get("upscalingMode", "Default")
    if mode not in UPSCALING_MODES:
        errors.append(f"RayCluster: spec.autoscalerOptions.upscalingMode {mode!r} is not one of {sorted(UPSCALING_MODES)}")
    return errors


def raycluster_errors(rc: dict) -> list[str]:
    """The RayCluster against KubeRay's schema, the fields our cluster relies on,
    and its pod templates as core/v1."""
    errors = kuberay_errors(rc)
    if rc.get("apiVersion") != "ray.io/v1" or rc.get("kind") != "RayCluster":
        errors.append("not a ray.io/v1 RayCluster")
    spec = rc.get("spec", {})
    if spec.get("enableInTreeAutoscaling") is not True:
        errors.append("spec.enableInTreeAutoscaling must be true")
    if spec.get("authOptions", {}).get("mode", "token") != "token" or not spec.get("authOptions", {}).get("secretName"):
        errors.append("spec.authOptions: token authentication with our own Secret (the engine reads it too)")
    head = spec.get("headGroupSpec", {})
    groups = [("head", head)] + [(f"worker {g.get('groupName')}", g) for g in spec.get("workerGroupSpecs", [])]
    if len(groups) < 2:
        errors.append("no workerGroupSpecs")
    for what, group in groups:
        params = group.get("rayStartParams")
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            errors.append(f"{what}: rayStartParams must map names to strings")
        template = group.get("template")
        if not isinstance(template, dict):
            errors.append(f"{what}: no pod template")
            continue
        errors += k8s_errors(as_pod_template(what.replace(" ", "-"), template))
        for c in template.get("spec", {}).get("containers", []):
            errors += ray_env_errors(what, {e["name"]: e.get("value") for e in c.get("env", [])})
    if "ray-client-server-port" not in head.get("rayStartParams", {}):
        errors.append("head: rayStartParams must name ray-client-server-port (the engine joins through it)")
    names = [g.get("groupName") for g in spec.get("workerGroupSpecs", [])]
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        errors.append(f"worker groupName missing or repeated: {names}")
    for g in spec.get("workerGroupSpecs", []):
        low, n, high = g.get("minReplicas"), g.get("replicas"), g.get("maxReplicas")
        if not all(isinstance(x, int) for x in (low, n, high)) or not low <= n <= high:
            errors.append(f"worker {g.get('groupName')}: need minReplicas <= replicas <= maxReplicas, "
                          f"got {low}, {n}, {high}")
    return errors


SERVICE_KEYS = {"image", "build", "entrypoint", "command", "environment", "env_file", "volumes", "ports",
                "depends_on", "links", "healthcheck", "shm_size", "cpus", "mem_limit", "restart", "networks",
                "secrets", "configs", "labels", "user", "working_dir", "expose", "ulimits", "deploy", "profiles"}
TOP_KEYS = {"name", "services", "volumes", "networks", "secrets", "configs", "include"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
PORT = re.compile(r"^(?:(?P<ip>[0-9.]+|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d+(?:-\d+)?):)?"
                  r"(?P<container>\d+(?:-\d+)?)(?:/(?:tcp|udp))?$")
INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")
USERINFO_PASSWORD = re.compile(r"://[^:/@\s]*:([^@\s]+)@")


def strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def ray_env_errors(what: str, env: dict) -> list[str]:
    """A Ray node's environment (name -> value) without engine/raybox.py's RAY_ENV:
    every node runs Ray as the engine's own Ray does."""
    return [f"{what}: environment {key} must be \"{want}\" (engine/raybox.py RAY_ENV)"
            for key, want in RAY_ENV.items() if env.get(key) != want]


def compose_errors(data: dict) -> list[str]:
    """What ``docker compose config`` refuses, and what we refuse beside it."""
    errors = [f"unknown top-level key {k!r}" for k in data if k not in TOP_KEYS and not k.startswith("x-")]
    services = data.get("services") or {}
    volumes = data.get("volumes") or {}
    for name, svc in services.items():
        if not isinstance(svc, dict):
            errors.append(f"{name}: not a mapping")
            continue
        errors += [f"{name}: unknown key {k!r}" for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")]
        if "image" not in svc and "build" not in svc:
            errors.append(f"{name}: neither image nor build")
        deps = svc.get("depends_on", [])
        for dep, how in (deps.items() if isinstance(deps, dict) else ((d, {}) for d in deps)):
            if dep not in services or dep == name:
                errors.append(f"{name}: depends_on {dep!r}, no such service")
            if isinstance(how, dict) and how.get("condition", "service_started") not in CONDITIONS:
                errors.append(f"{name}: depends_on {dep}: unknown condition {how.get('condition')!r}")
            if isinstance(how, dict) and how.get("condition") == "service_healthy" and \
                    "healthcheck" not in services.get(dep, {}) and "build" not in services.get(dep, {}):
                errors.append(f"{name}: waits for {dep} to be healthy, which has no healthcheck")
        for link in svc.get("links", []):
            if link.split(":")[0] not in services:
                errors.append(f"{name}: links {link!r}, no such service")
        for port in svc.get("ports", []):
            m = PORT.match(port) if isinstance(port, str) else None
            if m is None or any(int(p) > 65535 for g in ("host", "container") if m[g] for p in m[g].split("-")):
                errors.append(f"{name}: port {port!r} is not [ip:][host:]container[/proto] (write it as a string)")
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
        for key, value in env.items():
            if not isinstance(value, str):
                errors.append(f"{name}: environment {key} is {type(value).__name__}, not a string")
            elif is_secret_name(key) and not key.endswith("_URL") and not INTERPOLATION.fullmatch(value):
                # (a URL's password is checked below, with every string's)
                errors.append(f"{name}: environment {key} holds a value, not ${{VARIABLE}}")
        entry = svc.get("entrypoint") or []
        program = entry[0] if isinstance(entry, list) and entry else str(entry).split(" ")[0]
        if program == "ray":  # a Ray node: its raylet and agents read these
            errors += ray_env_errors(name, env)
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                errors.append(f"{name}: volume {source!r} is not declared under volumes")
        args = svc.get("command", [])
        for flag, value in zip(args, args[1:], strict=False):
            if flag in SECRET_FLAGS and not INTERPOLATION.fullmatch(str(value)):
                errors.append(f"{name}: {flag} takes a value, not ${{VARIABLE}}")
    for s in strings(data):
        unescaped = s.replace("$$", "")
        if unescaped.count("${") != len(INTERPOLATION.findall(unescaped)):
            errors.append(f"malformed ${{...}} in {s!r}")
        for password in USERINFO_PASSWORD.findall(s):
            if not INTERPOLATION.fullmatch(password):
                errors.append(f"a password written in a URL: {s.split('@')[-1]!r}")
    return errors


def interpolate(value: str) -> str:
    return INTERPOLATION.sub(PLACEHOLDER, value)


def container_env(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    """The environment a container gets: ConfigMaps it reads whole, then its own
    entries; a value from a Secret is a placeholder (only its name is known here)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_maps[source["configMapRef"]["name"]])
    for e in container.get("env", []):
        env[e["name"]] = e["value"] if "value" in e else PLACEHOLDER
    return env


def engine_container(docs: list[dict] | None = None) -> dict:
    deployment = one("Deployment", docs if docs is not None else manifests()["engine.yaml"])
    [c] = deployment["spec"]["template"]["spec"]["containers"]
    return c


def engine_env(docs: list[dict] | None = None) -> dict[str, str]:
    docs = docs if docs is not None else manifests()["engine.yaml"]
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    return container_env(engine_container(docs), config_maps)


def dockerfile_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", text, re.M)
    assert entrypoint and cmd, "the Dockerfile's ENTRYPOINT and CMD are JSON arrays"
    return json.loads(entrypoint[1]) + json.loads(cmd[1])


def probe_errors(container: dict, port: int) -> list[str]:
    """Each probe calls a route the engine serves, on the port it listens on; an
    httpGet probe (from the kubelet, the node's address) only a public route."""
    routes = {r.path: r for r in ROUTES if r.method == "GET"}
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    errors = []
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = container.get(kind)
        if probe is None:
            errors.append(f"{kind}: missing")
        elif "httpGet" in probe:
            get = probe["httpGet"]
            route, at = routes.get(get["path"]), ports.get(get["port"], get["port"])
            if route is None or not isinstance(route.policy, Public):
                errors.append(f"{kind}: GET {get['path']} is not a public route of the engine")
            if at != port:
                errors.append(f"{kind}: port {get['port']} is not the engine's {port}")
        else:
            command = " ".join(probe.get("exec", {}).get("command", []))
            urls = [urlsplit(u) for u in re.findall(r"https?://[^'\"\s]+", command)]
            if len(urls) != 1 or urls[0].path not in routes or urls[0].hostname != "127.0.0.1" \
                    or urls[0].port != port:
                errors.append(f"{kind}: exec must call one route of the engine at 127.0.0.1:{port}: {command!r}")
    if container.get("readinessProbe", {}).get("exec") is None and \
            "/readyz" not in str(container.get("readinessProbe")):
        errors.append("readinessProbe: must call /readyz")
    return errors
