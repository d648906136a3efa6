"""deploy/kubernetes/scaled (the cluster layout): core manifests validate strictly against the
Kubernetes 1.30 schemas (offline), the graft args parse with the real CLI, every graft pod
opens the same PostgreSQL store and the same ReadWriteMany volume, the API runs no worker,
both worker lanes are deployed, and the KEDA ScaledObject (whose CRD schema is not at hand)
is checked field by field, its PromQL evaluated by promtool on synthetic series."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest

from graft.config import Config, env_defaults
from tests.deploy.common import (
    DEPLOY,
    IMAGE_UID,
    REPO,
    SERVER_JOB,
    WORKER_JOB,
    graft_args,
    load_yaml,
    load_yaml_docs,
)

SCALED = DEPLOY / "kubernetes" / "scaled"
TRIAL_DB = SCALED / "postgres"
KUBERNETES_VERSION = "1.30"
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}
STORE_SECRET = "graft-store"  # made by hand (docs/SCALING.md): GRAFT_STORE_URL, PGPASSWORD
# What the Secret holds when the trial database (scaled/postgres) is the store.
TRIAL_ENV = {"GRAFT_STORE_URL": "postgresql://graft@graft-postgres:5432/graft", "PGPASSWORD": "x"}
GRAFT_DEPLOYMENTS = ("graft-server", "graft-trainer", "graft-advisor")

Obj = dict[str, Any]


def manifest_files(folder: Path = SCALED) -> list[Path]:
    return sorted(p for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")


def objects(folder: Path = SCALED) -> list[Obj]:
    return [doc for path in manifest_files(folder) for doc in load_yaml_docs(path)]


def find(kind: str, name: str, folder: Path = SCALED) -> Obj:
    (obj,) = [o for o in objects(folder) if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def pod_spec(workload: Obj) -> Obj:
    return dict(workload["spec"]["template"]["spec"])


def container(workload: Obj) -> Obj:
    (c,) = pod_spec(workload)["containers"]
    return dict(c)


def pod_env(deployment: Obj, secret: dict[str, str] | None = None) -> dict[str, str]:
    """The container's environment: ConfigMaps and the store Secret (`secret`'s values)."""
    c = container(deployment)
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            assert source["secretRef"]["name"] == STORE_SECRET
            env.update(secret or TRIAL_ENV)
    return env


def args_of(deployment: Obj) -> list[str]:
    """The container's args with Kubernetes' $(VAR) expansion from its environment."""
    env = pod_env(deployment)

    def expand(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined"
        return env[m.group(1)]

    return [
        re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, a) for a in container(deployment)["args"]
    ]


def config_of(deployment: Obj) -> Config:
    """The Config the process builds from its flags over its environment (as graft does)."""
    args = graft_args(args_of(deployment))
    kw = env_defaults(pod_env(deployment))
    if args.data_dir:
        kw["data_dir"] = args.data_dir
    if args.store_url:
        kw["store_url"] = args.store_url
    return Config(**kw)


def test_kustomizations_list_every_manifest() -> None:
    for folder in (SCALED, TRIAL_DB):
        kustomization = load_yaml(folder / "kustomization.yaml")
        assert sorted(kustomization["resources"]) == [p.name for p in manifest_files(folder)]
    images = {
        container(find("Deployment", name))["image"].split(":")[0] for name in GRAFT_DEPLOYMENTS
    }
    assert {i["name"] for i in load_yaml(SCALED / "kustomization.yaml")["images"]} == images


@pytest.mark.parametrize(
    "path",
    manifest_files() + manifest_files(TRIAL_DB),
    ids=lambda p: p.relative_to(SCALED).as_posix(),
)
def test_core_manifests_validate_against_the_kubernetes_schema(path: Path) -> None:
    for obj in load_yaml_docs(path):
        if (obj["apiVersion"], obj["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_validation_can_fail() -> None:
    bad = copy.deepcopy(find("Deployment", "graft-trainer"))
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"nvidia.com/gpu": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_api_replicas_run_no_worker_and_roll() -> None:
    server = find("Deployment", "graft-server")
    args = graft_args(args_of(server))
    assert args.command == "serve" and args.no_worker and args.host == "0.0.0.0"
    assert server["spec"]["replicas"] >= 2
    assert server["spec"]["strategy"]["type"] == "RollingUpdate"
    assert "affinity" not in pod_spec(server)  # nothing ties it to a node any more
    c = container(server)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": args.port, "health": args.health_port, "metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": args.health_port, "service": ""}, probe
    grace = pod_spec(server)["terminationGracePeriodSeconds"]
    assert grace > float(c["lifecycle"]["preStop"]["exec"]["command"][-1]) + args.grace_seconds
    budget = find("PodDisruptionBudget", "graft-server")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels(server).items()
    assert 1 <= budget["spec"]["minAvailable"] < server["spec"]["replicas"]


def labels(workload: Obj) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("name", GRAFT_DEPLOYMENTS)
def test_every_graft_pod_opens_the_postgres_store_and_the_shared_volume(name: str) -> None:
    deployment = find("Deployment", name)
    config = config_of(deployment)
    assert config.store_url == TRIAL_ENV["GRAFT_STORE_URL"]  # from the Secret, not SQLite
    assert pod_env(deployment)["PGPASSWORD"]  # libpq's password, from the same Secret
    pod = pod_spec(deployment)
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    # The artifacts (registry, uploads, checkpoints) on the ReadWriteMany volume...
    shared = volumes[mounts[str(config.artifacts_root)]]
    claim = find("PersistentVolumeClaim", shared["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in (config.registry_dir, config.uploads_dir, config.checkpoints_dir):
        assert path.parent == config.artifacts_root
    # ...and the pod's own files (its ready file, its caches) on a volume of its own.
    assert "emptyDir" in volumes[mounts[str(config.data_dir)]]
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID == pod["securityContext"]["fsGroup"]
    assert container(deployment)["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_all_graft_pods_agree_on_artifacts_store_and_lease() -> None:
    configs = [config_of(find("Deployment", name)) for name in GRAFT_DEPLOYMENTS]
    assert len({(c.artifacts_root, c.store_url, c.lease_seconds) for c in configs}) == 1


def test_workers_cover_both_lanes_and_trainers_get_a_gpu_each() -> None:
    trainer, advisor = find("Deployment", "graft-trainer"), find("Deployment", "graft-advisor")
    t_args, a_args = graft_args(args_of(trainer)), graft_args(args_of(advisor))
    assert t_args.command == a_args.command == "worker"
    # `graft worker` without --lane runs both: each Deployment names its one lane.
    assert (t_args.lanes, a_args.lanes) == (["trainer"], ["advisor"])
    assert (
        t_args.device == "cuda" and container(trainer)["resources"]["limits"]["nvidia.com/gpu"] == 1
    )
    assert "nvidia.com/gpu" not in container(advisor)["resources"].get("limits", {})
    assert advisor["spec"]["replicas"] >= 1  # Advise needs an advisor whatever the queue
    # The autoscaler owns the trainers' count: a replicas field would reset it on every apply.
    assert "replicas" not in trainer["spec"]
    assert pod_spec(trainer)["terminationGracePeriodSeconds"] >= t_args.stop_timeout + 60
    for worker in (trainer, advisor):
        assert "affinity" not in pod_spec(worker)
        probe = container(worker)["livenessProbe"]["httpGet"]
        assert probe == {"path": "/metrics", "port": "metrics"}
        port = {p["name"]: p["containerPort"] for p in container(worker)["ports"]}["metrics"]
        assert port == graft_args(args_of(worker)).metrics_port


def selected(service: Obj) -> set[str]:
    """The Deployments whose pods a Service selects."""
    deployments = [o for o in objects() if o["kind"] == "Deployment"]
    return {
        d["metadata"]["name"]
        for d in deployments
        if service["spec"]["selector"].items() <= labels(d).items()
    }


def test_services_select_their_pods_and_name_real_ports() -> None:
    expected = {
        SERVER_JOB: ({"graft-server"}, {"grpc", "metrics"}, False),
        "graft-server-headless": ({"graft-server"}, {"grpc"}, True),
        WORKER_JOB: ({"graft-trainer", "graft-advisor"}, {"metrics"}, True),
    }
    services = {o["metadata"]["name"]: o for o in objects() if o["kind"] == "Service"}
    assert set(services) == set(expected)
    for name, (deployments, port_names, headless) in expected.items():
        svc = services[name]
        assert selected(svc) == deployments, name
        assert {p["name"] for p in svc["spec"]["ports"]} == port_names
        assert (svc["spec"].get("clusterIP") == "None") == headless, name
        for deployment in deployments:
            ports = {
                p["name"]: p["containerPort"]
                for p in container(find("Deployment", deployment))["ports"]
            }
            for port in svc["spec"]["ports"]:
                assert port["port"] == ports[port["targetPort"]], (name, port)


def test_each_service_monitor_selects_exactly_its_service() -> None:
    monitors = [o for o in objects() if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {SERVER_JOB, WORKER_JOB}
    services = [o for o in objects() if o["kind"] == "Service"]
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        # The headless API Service is labelled apart: its pods are not scraped twice.
        (svc,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert svc["metadata"]["name"] == monitor["metadata"]["name"]
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in svc["spec"]["ports"]
        }


def test_the_trial_database_is_what_the_store_url_names() -> None:
    postgres = find("StatefulSet", "graft-postgres", TRIAL_DB)
    service = find("Service", "graft-postgres", TRIAL_DB)
    url = urlsplit(TRIAL_ENV["GRAFT_STORE_URL"])
    assert url.hostname == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels(postgres).items()
    (port,) = service["spec"]["ports"]
    c = container(postgres)
    assert (
        url.port
        == port["port"]
        == {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]]
    )
    env = {e["name"]: e for e in c["env"]}
    assert env["POSTGRES_USER"]["value"] == url.username
    assert env["POSTGRES_DB"]["value"] == url.path.lstrip("/")
    # The database's password is the one the graft pods give libpq.
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": STORE_SECRET,
        "key": "PGPASSWORD",
    }
    (mount,) = c["volumeMounts"][:1]
    assert env["PGDATA"]["value"].startswith(mount["mountPath"] + "/")
    assert mount["name"] in {
        t["metadata"]["name"] for t in postgres["spec"]["volumeClaimTemplates"]
    }
    ready = c["readinessProbe"]["exec"]["command"]
    assert ready[0] == "pg_isready" and ready[ready.index("-U") + 1] == url.username


def test_the_documented_secret_is_the_one_the_pods_read() -> None:
    text = (REPO / "docs" / "SCALING.md").read_text()
    (command,) = re.findall(r"kubectl create secret generic (\S+)((?:[^\n]*\\\n)*[^\n]*)", text)
    name, rest = command
    assert name == STORE_SECRET
    assert set(re.findall(r"--from-literal=(\w+)=", rest)) == set(TRIAL_ENV)
    url = re.search(r"GRAFT_STORE_URL=(\S+)", rest)
    assert url and Config(store_url=url.group(1)).store_url.startswith("postgresql://")
