"""deploy/kubernetes: core manifests validate against the Kubernetes 1.30 schemas (strict,
offline), the graft args parse with the real CLI, and probes, ports, volumes, Services and
ServiceMonitors agree with each other."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from graft.config import Config
from tests.deploy.common import (
    DEPLOY,
    IMAGE_UID,
    SERVER_JOB,
    WORKER_JOB,
    graft_args,
    load_yaml,
    load_yaml_docs,
)

K8S = DEPLOY / "kubernetes"
KUBERNETES_VERSION = "1.30"
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

Obj = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> list[Obj]:
    return [doc for path in manifest_files() for doc in load_yaml_docs(path)]


def find(kind: str, name: str) -> Obj:
    (obj,) = [o for o in objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(deployment: Obj) -> Obj:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(c)


def expanded_args(deployment: Obj) -> list[str]:
    """The container's args with Kubernetes' $(VAR) expansion from its env and ConfigMaps."""
    c = container(deployment)
    env = {e["name"]: e["value"] for e in c.get("env", [])}
    for source in c.get("envFrom", []):
        env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])

    def expand(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"$({m.group(1)}) is not defined for {c['name']}"
        return str(env[m.group(1)])

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, a) for a in c["args"]]


def container_ports(deployment: Obj) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    images = {c["image"].split(":")[0] for c in map(container, deployments())}
    assert {i["name"] for i in kustomization["images"]} == images


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_core_manifests_validate_against_the_kubernetes_schema(path: Path) -> None:
    for obj in load_yaml_docs(path):
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_schema_validation_can_fail() -> None:
    bad = copy.deepcopy(find("Deployment", "graft-server"))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def deployments() -> list[Obj]:
    return [o for o in objects() if o["kind"] == "Deployment"]


def test_server_deployment() -> None:
    server = find("Deployment", "graft-server")
    args = graft_args(expanded_args(server))
    assert args.command == "serve" and args.no_worker and args.host == "0.0.0.0"
    ports = container_ports(server)
    assert ports == {"grpc": args.port, "health": args.health_port, "metrics": args.metrics_port}
    c = container(server)
    # The API port serves TLS, which Kubernetes' gRPC probes cannot speak: they use the
    # plaintext port that serves grpc.health.v1 alone.
    assert args.tls_cert and args.health_port and args.health_port != args.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"] == {"port": args.health_port, "service": ""}, probe
    # Kubernetes waits for preStop + the drain before it kills the pod.
    pre_stop = float(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    grace = server["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + args.grace_seconds
    assert server["spec"]["strategy"]["type"] == "Recreate"


def test_server_serves_tls_from_a_secret_and_requires_api_keys() -> None:
    server = find("Deployment", "graft-server")
    args = graft_args(expanded_args(server))
    config = Config(
        host=args.host, tls_cert=args.tls_cert, tls_key=args.tls_key, auth=args.auth or "auto"
    )
    assert config.auth_enabled  # on 0.0.0.0 by default: keys from `graft keys create`
    volumes = {v["name"]: v for v in server["spec"]["template"]["spec"]["volumes"]}
    mounts = container(server)["volumeMounts"]
    for path, key in ((args.tls_cert, "tls.crt"), (args.tls_key, "tls.key")):
        (mount,) = [m for m in mounts if path.startswith(m["mountPath"] + "/")]
        assert path == f"{mount['mountPath']}/{key}"  # the key names of a kubernetes.io/tls Secret
        assert mount["readOnly"] is True
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == "graft-tls"
        assert secret["defaultMode"] & 0o007 == 0  # the private key is not world-readable
    pod = server["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID  # so the group can read it


def test_worker_deployment() -> None:
    worker = find("Deployment", "graft-worker")
    args = graft_args(expanded_args(worker))
    assert args.command == "worker" and args.device == "cuda"
    # SIGTERM: up to --stop-timeout for the epoch checkpoint, then a last step and the release.
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= args.stop_timeout + 60
    c = container(worker)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container_ports(worker) == {"metrics": args.metrics_port}
    probe = c["livenessProbe"]["httpGet"]
    assert probe["path"] == "/metrics"
    assert container_ports(worker)[probe["port"]] == args.metrics_port
    # Scheduled onto the server's node: SQLite's WAL store is shared on one node only.
    (term,) = worker["spec"]["template"]["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    server_labels = find("Deployment", "graft-server")["spec"]["template"]["metadata"]["labels"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"].items() <= server_labels.items()


@pytest.mark.parametrize("name", ["graft-server", "graft-worker"])
def test_pods_run_as_the_image_user_on_the_shared_volume(name: str) -> None:
    deployment = find("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID
    c = container(deployment)
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    data_dir = str(graft_args(expanded_args(deployment)).data_dir)
    claim = volumes[mounts[data_dir]]["persistentVolumeClaim"]["claimName"]
    pvc = find("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    if c["securityContext"].get("readOnlyRootFilesystem"):
        assert "emptyDir" in volumes[mounts["/tmp"]]


def service_for(deployment: Obj) -> Obj:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (svc,) = [
        o
        for o in objects()
        if o["kind"] == "Service" and o["spec"]["selector"].items() <= labels.items()
    ]
    return svc


def test_services_select_their_pods_and_name_real_ports() -> None:
    expected = {
        "graft-server": (SERVER_JOB, {"grpc", "metrics"}),
        "graft-worker": (WORKER_JOB, {"metrics"}),
    }
    for name, (service_name, port_names) in expected.items():
        deployment = find("Deployment", name)
        svc = service_for(deployment)
        assert svc["metadata"]["name"] == service_name  # = the Prometheus job label
        ports = container_ports(deployment)
        assert {p["name"] for p in svc["spec"]["ports"]} == port_names
        for port in svc["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]]
    assert find("Service", WORKER_JOB)["spec"]["clusterIP"] == "None"  # headless


def test_service_monitors_select_the_services_metrics_ports() -> None:
    monitors = [o for o in objects() if o["kind"] == "ServiceMonitor"]
    assert {m["metadata"]["name"] for m in monitors} == {SERVER_JOB, WORKER_JOB}
    services = [o for o in objects() if o["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        (svc,) = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert svc["metadata"]["name"] == monitor["metadata"]["name"]
        svc_ports = {p["name"] for p in svc["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in svc_ports
            assert endpoint["path"] == "/metrics"
        assert "jobLabel" not in monitor["spec"]  # the job label stays the Service name
