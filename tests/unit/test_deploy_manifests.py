"""The deployment files of configs/deploy/ (README, "Deploy"): every YAML parses;
every built-in Kubernetes object, and each Ray pod template wrapped as a
PodTemplate, validates against the Kubernetes schemas of K8S_VERSION
(kubernetes-validate, offline, strict: an unknown field is an error); the KubeRay
fields the cluster relies on are checked by hand; compose.yaml gets the checks
``docker compose config`` would make. Then the files are tied to the code: the
settings they give load with the engine's own loader, the probes call routes the
engine serves on the port it listens on, the command is the Dockerfile's, and no
secret value is written in any of them. The last tests break a copy of each file
and require the checks to refuse it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema  # kubernetes-validate's own validator
import kubernetes_validate
import pytest
import yaml

from engine import settings
from engine.http.access import Public
from engine.http.health import ROUTES
from infra.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "configs" / "deploy"
K8S = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests are meant for; its schemas ship with kubernetes-validate.
K8S_VERSION = "1.33.0"
# The RayCluster CRD's schema of the KubeRay release the manifest is written for (see its $comment).
KUBERAY_SCHEMA = Path(__file__).parent / "data" / "kuberay-raycluster-v1.7.0.schema.json"
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


def no_unknown_fields(schema: Any) -> Any:
    """The schema with unknown fields refused, as ``kubectl apply`` (strict field
    validation) refuses them, wherever it lists the fields and keeps no others."""
    if isinstance(schema, list):
        return [no_unknown_fields(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: no_unknown_fields(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def kuberay_errors(rc: dict) -> list[str]:
    schema = no_unknown_fields(json.loads(KUBERAY_SCHEMA.read_text()))
    return [f"RayCluster: {'/'.join(str(p) for p in e.path)}: {e.message}"
            for e in jsonschema.Draft7Validator(schema).iter_errors(rc)]


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
            env = {e["name"]: e for e in c.get("env", [])}
            if env.get("RAY_USAGE_STATS_ENABLED", {}).get("value") != "0":
                errors.append(f"{what}: RAY_USAGE_STATS_ENABLED must be \"0\"")
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


# -- the files as they are ------------------------------------------------------------------


def test_every_yaml_file_parses():
    files = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "compose.yaml", "kubernetes/raycluster.yaml", "kubernetes/engine.yaml", "kubernetes/postgresql.yaml",
        "kubernetes/redis.yaml", "kubernetes/values/nats.yaml"}
    for path in files:
        documents(path)


def test_built_in_objects_validate_and_others_are_known():
    seen = set()
    for name, docs in manifests().items():
        for doc in docs:
            if is_built_in(doc):
                assert k8s_errors(doc) == [], name
                assert doc["kind"] != "Secret", f"{name}: a Secret's value in a manifest"
            else:
                seen.add((doc["apiVersion"], doc["kind"]))
    # every custom resource has its own checks below
    assert seen == {("ray.io/v1", "RayCluster"), ("postgresql.cnpg.io/v1", "Cluster")}


def test_raycluster_is_well_formed():
    rc = one("RayCluster", manifests()["raycluster.yaml"])
    assert raycluster_errors(rc) == []


def test_every_ray_node_runs_the_engine_image():
    rc = one("RayCluster")
    templates = [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    images = {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert images == {engine_container()["image"]}


def test_engine_settings_load_with_the_engines_own_loader():
    env = engine_env()
    cfg = settings.load(env=env)
    rc = one("RayCluster")
    client_port = rc["spec"]["headGroupSpec"]["rayStartParams"]["ray-client-server-port"]
    assert cfg.ray.address == f"ray://{rc['metadata']['name']}-head-svc:{client_port}"
    assert cfg.http.host == "0.0.0.0" and cfg.ray.actor_cpus > 0
    assert urlsplit(cfg.nats.url).hostname == "nats" and urlsplit(cfg.nats.url).port == 4222  # the chart's release
    assert cfg.database.url == PLACEHOLDER and cfg.redis.url == PLACEHOLDER  # from Secrets, not the profile
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"


def test_probes_call_the_engines_routes_on_its_port():
    cfg = settings.load(env=engine_env())
    container = engine_container()
    assert [p["containerPort"] for p in container["ports"]] == [cfg.http.port]
    assert probe_errors(container, cfg.http.port) == []
    # /readyz answers loopback clients only unless ops_access is "scope": then the
    # probe would need a key, which a manifest must not hold
    assert cfg.http.ops_access == "loopback" and "exec" in container["readinessProbe"]


def test_the_engine_runs_the_dockerfiles_command():
    c = engine_container()
    assert c["command"] + c["args"] == dockerfile_command()
    compose = documents(DEPLOY / "compose.yaml")[0]
    engine = compose["services"]["engine"]
    assert engine["entrypoint"] + engine["command"] == dockerfile_command()


def test_one_engine_that_stops_before_the_next_starts():
    spec = one("Deployment", manifests()["engine.yaml"])["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"


def test_secrets_are_referenced_never_written():
    for name, docs in manifests().items():
        for doc in docs:
            for key in (doc.get("data") or {}) if doc["kind"] == "ConfigMap" else ():
                assert not is_secret_name(key), f"{name}: {key} in a ConfigMap"
            for s in strings(doc):
                assert not USERINFO_PASSWORD.search(s), f"{name}: a password in {s!r}"
    pods = [one("Deployment", manifests()["engine.yaml"])["spec"]["template"],
            one("Deployment", manifests()["redis.yaml"])["spec"]["template"]]
    rc = one("RayCluster")
    pods += [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]
    env = [e for p in pods for c in p["spec"]["containers"] for e in c.get("env", [])]
    env += rc["spec"]["autoscalerOptions"].get("env", [])
    secret_env = [e for e in env if is_secret_name(e["name"])]
    assert secret_env and all("secretKeyRef" in e.get("valueFrom", {}) for e in secret_env)


def test_the_engine_presents_the_ray_clusters_token():
    rc = one("RayCluster")
    [token] = [e for e in engine_container()["env"] if e["name"] == "RAY_AUTH_TOKEN"]
    # KubeRay reads the token from the key auth_token of authOptions.secretName
    assert token["valueFrom"]["secretKeyRef"] == {"name": rc["spec"]["authOptions"]["secretName"], "key": "auth_token"}
    assert engine_env()["RAY_AUTH_MODE"] == "token"


def test_provider_files_are_where_the_ray_pods_mount_them():
    # ChannelShards open key files on the Ray nodes: each *_file setting of the
    # production profile must lie under a Secret volume every Ray container mounts
    cfg = settings.load(env=engine_env())
    files = [v for ch in cfg.channels.values() for p in ch.providers for k, v in p.settings.items()
             if k.endswith("_file") and isinstance(v, str)]
    assert files
    rc = one("RayCluster")
    for template in [rc["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in rc["spec"]["workerGroupSpecs"]]:
        secret_volumes = {v["name"] for v in template["spec"]["volumes"] if "secret" in v}
        for c in template["spec"]["containers"]:
            mounts = [m["mountPath"].rstrip("/") + "/" for m in c["volumeMounts"] if m["name"] in secret_volumes]
            assert all(any(f.startswith(m) for m in mounts) for f in files), (files, mounts)


def test_postgresql_cluster_gives_the_secret_the_engine_reads():
    pg = one("Cluster", manifests()["postgresql.yaml"])
    assert pg["apiVersion"] == "postgresql.cnpg.io/v1" and pg["spec"]["instances"] >= 3
    initdb = pg["spec"]["bootstrap"]["initdb"]
    assert initdb["database"] and initdb["owner"]
    [url] = [e for e in engine_container()["env"] if e["name"] == "TIDINGS_DATABASE_URL"]
    # CloudNativePG names the application Secret <cluster>-app, with the key "uri"
    assert url["valueFrom"]["secretKeyRef"] == {"name": f"{pg['metadata']['name']}-app", "key": "uri"}


def test_nats_values_give_a_jetstream_cluster_of_three():
    values = documents(K8S / "values" / "nats.yaml")[0]
    cluster, js = values["config"]["cluster"], values["config"]["jetstream"]
    assert cluster["enabled"] is True and cluster["replicas"] == 3
    assert js["enabled"] is True and js["fileStore"]["enabled"] is True
    assert re.fullmatch(r"\d+(Mi|Gi|Ti)", js["fileStore"]["pvc"]["size"])


def test_compose_is_what_docker_compose_config_accepts():
    data = documents(DEPLOY / "compose.yaml")[0]
    assert compose_errors(data) == []
    services = data["services"]
    assert {"nats", "postgres", "redis", "ray-head", "engine"} <= set(services)
    workers = [s for n, s in services.items() if n.startswith("ray-worker")]
    assert len(workers) >= 2 and all("--address=ray-head:6379" in w["command"] for w in workers)
    # each worker says its own resources
    assert len({next(a for a in w["command"] if a.startswith("--resources=")) for w in workers}) == len(workers)
    assert services["ray-head"]["image"] == services["engine"]["image"] == workers[0]["image"]
    assert "-js" in services["nats"]["command"]


def test_compose_engine_settings_load():
    engine = documents(DEPLOY / "compose.yaml")[0]["services"]["engine"]
    env = {k: interpolate(v) for k, v in engine["environment"].items()}
    # the image holds configs/ at /app/configs
    env["TIDINGS_CONFIG"] = env["TIDINGS_CONFIG"].replace("/app/configs", str(ROOT / "configs"))
    cfg = settings.load(env=env)
    assert cfg.ray.address == "ray://ray-head:10001" and cfg.enabled_channels() == {"in_app"}
    assert cfg.http.host == "0.0.0.0" and f"{cfg.http.port}:{cfg.http.port}" in engine["ports"][0]


# -- broken copies are refused --------------------------------------------------------------


@pytest.mark.parametrize("breaking, expected", [
    (lambda rc: rc["spec"]["workerGroupSpecs"][0].update(minReplicas=9), "minReplicas <= replicas"),
    (lambda rc: rc["spec"].update(enableInTreeAutoscaling=False), "enableInTreeAutoscaling"),
    (lambda rc: rc.update(apiVersion="ray.io/v1alpha1"), "ray.io/v1"),
    (lambda rc: rc["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "strings"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0].pop("groupName"), "groupName"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0].update(minReplica=1), "minReplica"),
    (lambda rc: rc["spec"]["autoscalerOptions"].update(upscalingMode="Fast"), "upscalingMode"),
    (lambda rc: rc["spec"].pop("authOptions"), "authOptions"),
    (lambda rc: rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0].update(
        containerPort="gcs"), "containerPort"),
    (lambda rc: rc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(resource={}),
     "resource"),
])
def test_a_broken_raycluster_is_refused(breaking, expected):
    rc = copy.deepcopy(one("RayCluster"))
    breaking(rc)
    assert any(expected in e for e in raycluster_errors(rc)), raycluster_errors(rc)


def test_a_misspelt_kubernetes_field_is_refused():
    deployment = copy.deepcopy(one("Deployment", manifests()["engine.yaml"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    assert k8s_errors(deployment)


def test_an_unknown_setting_in_the_config_map_is_refused():
    docs = copy.deepcopy(manifests()["engine.yaml"])
    one("ConfigMap", docs)["data"]["TIDINGS_HTTP_PORTT"] = "8080"
    with pytest.raises(ConfigError, match="TIDINGS_HTTP_PORTT"):
        settings.load(env=engine_env(docs))


@pytest.mark.parametrize("breaking, expected", [
    (lambda c: c["livenessProbe"]["httpGet"].update(path="/health"), "livenessProbe"),
    (lambda c: c["livenessProbe"]["httpGet"].update(path="/readyz"), "not a public route"),
    (lambda c: c["startupProbe"]["httpGet"].update(port=9090), "startupProbe: port"),
    (lambda c: c.update(readinessProbe={"exec": {"command": ["python", "-c", "open('http://127.0.0.1:8081/readyz')"]}}),
     "readinessProbe"),
])
def test_a_probe_off_the_engines_routes_is_refused(breaking, expected):
    container = copy.deepcopy(engine_container())
    breaking(container)
    assert any(expected in e for e in probe_errors(container, 8080))


@pytest.mark.parametrize("breaking, expected", [
    (lambda d: d["services"]["engine"]["depends_on"].update(rabbit={"condition": "service_started"}), "rabbit"),
    (lambda d: d["services"]["engine"].update(ports=["127.0.0.1:80:http"]), "port"),
    (lambda d: d["services"]["engine"].update(ports=[8080]), "port"),
    (lambda d: d["services"]["engine"]["environment"].update(TIDINGS_HTTP_PORT=8080), "not a string"),
    (lambda d: d["services"]["postgres"]["environment"].update(POSTGRES_PASSWORD="hunter2"), "POSTGRES_PASSWORD"),
    (lambda d: d["services"]["engine"]["environment"].update(
        TIDINGS_DATABASE_URL="postgresql://tidings:hunter2@postgres/tidings"), "password"),
    (lambda d: d["services"]["redis"].update(command=["redis-server", "--requirepass", "hunter2"]), "requirepass"),
    (lambda d: d["services"]["nats"].pop("image"), "neither image nor build"),
    (lambda d: d["services"]["nats"].update(volumes=["natsdata:/data"]), "natsdata"),
    (lambda d: d["services"]["engine"]["environment"].update(RAY_ADDRESS="${RAY"), "malformed"),
    (lambda d: d["services"]["engine"].update(imagee="x"), "imagee"),
])
def test_a_broken_compose_file_is_refused(breaking, expected):
    data = copy.deepcopy(documents(DEPLOY / "compose.yaml")[0])
    breaking(data)
    assert any(expected in e for e in compose_errors(data)), compose_errors(data)
