"""The deployment files of configs/deploy/ (README, "Deploy"): every YAML parses;
every built-in Kubernetes object, and each Ray pod template wrapped as a
PodTemplate, validates against the Kubernetes schemas of K8S_VERSION
(kubernetes-validate, offline, strict: an unknown field is an error); the
RayCluster's fields are KubeRay's and the ones the cluster relies on are
checked (tests/unit/deploy_checks.py); compose.yaml gets the checks
``docker compose config`` would make. Then the files are tied to the code: the
settings they give load with the engine's own loader, the probes call routes the
engine serves on the port it listens on, the command is the Dockerfile's, and no
secret value is written in any of them. The last tests break a copy of each file
and require the checks to refuse it."""

from __future__ import annotations

import copy
import re
from urllib.parse import urlsplit

import pytest

from engine import settings
from infra.config import ConfigError
from tests.unit.deploy_checks import (
    DEPLOY,
    K8S,
    PLACEHOLDER,
    ROOT,
    USERINFO_PASSWORD,
    compose_errors,
    dockerfile_command,
    documents,
    engine_container,
    engine_env,
    interpolate,
    is_built_in,
    is_secret_name,
    k8s_errors,
    manifests,
    one,
    probe_errors,
    raycluster_errors,
    strings,
)

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


def test_ray_version_has_the_health_endpoint_the_probes_call():
    # /api/healthz (raylet and GCS in one) is Ray 2.53's; KubeRay also keys its own
    # defaults on rayVersion. Keep it the image's Ray (the engine's Ray client must match it).
    version = tuple(int(x) for x in one("RayCluster")["spec"]["rayVersion"].split("."))
    assert version >= (2, 53, 0)


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


def test_several_engines_and_a_rollout_that_ends_the_old_actors_first():
    docs = manifests()["engine.yaml"]
    spec = one("Deployment", docs)["spec"]
    # instances of different images or configurations refuse each other: the old stop first
    assert spec["replicas"] >= 2 and spec["strategy"]["type"] == "Recreate"
    budget = one("PodDisruptionBudget", docs)["spec"]
    assert budget["minAvailable"] == 1 and budget["selector"] == spec["selector"]


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
    head = documents(DEPLOY / "compose.yaml")[0]["services"]["ray-head"]["command"]
    assert cfg.ray.address == "ray://ray-head:10001" and "--ray-client-server-port=10001" in head
    assert cfg.enabled_channels() == {"in_app"}
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
    # every Ray node runs Ray's metrics as the engine's own Ray does (engine/raybox.py RAY_ENV)
    (lambda d: d["services"]["ray-worker-2"].update(environment={"RAY_USAGE_STATS_ENABLED": "0"}),
     "ray-worker-2: environment RAY_enable_open_telemetry"),
    (lambda d: d["services"]["ray-head"]["environment"].update(RAY_metric_cardinality_level="recommended"),
     "RAY_metric_cardinality_level must be"),
])
def test_a_broken_compose_file_is_refused(breaking, expected):
    data = copy.deepcopy(documents(DEPLOY / "compose.yaml")[0])
    breaking(data)
    assert any(expected in e for e in compose_errors(data)), compose_errors(data)
