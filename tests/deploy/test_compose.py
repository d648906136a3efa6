"""deploy/compose: valid against the Compose specification's schema, every mounted file
exists, the graft commands parse with the real CLI, and Prometheus/Grafana are wired to the
services and ports that exist."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest

from graft.config import Config, env_defaults
from tests.deploy.common import DEPLOY, SERVER_JOB, WORKER_JOB, graft_args, load_yaml

COMPOSE = DEPLOY / "compose"
FILES = ["compose.yaml", "compose.gpu.yaml", "compose.postgres.yaml"]


def compose(name: str = "compose.yaml") -> dict[str, Any]:
    return dict(load_yaml(COMPOSE / name))


def compose_schema_validator() -> jsonschema.protocols.Validator:
    # The Compose specification's JSON schema, as check-jsonschema vendors it (offline).
    text = (
        importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text()
    )
    schema = json.loads(text)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def graft_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in doc["services"].items()
        if svc.get("build", {}).get("dockerfile") == "deploy/docker/Dockerfile"
    }


def with_gpu_overlay() -> dict[str, Any]:
    """compose.yaml with compose.gpu.yaml merged in the way Compose does for these keys."""
    return merged("compose.yaml", "compose.gpu.yaml")


def merge(base: Any, overlay: Any) -> Any:
    """Compose's merge for the keys these files use: mappings (services, environment,
    depends_on, volumes, build) key by key, anything else (command, lists) replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return overlay


def merged(*names: str) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in names:
        doc = merge(doc, {k: v for k, v in compose(name).items() if not k.startswith("x-")})
    return doc


def seconds(duration: str) -> float:
    """A Compose duration such as 5m or 1m30s, in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Short-syntax volumes as {target: source}."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


@pytest.mark.parametrize("name", FILES)
def test_valid_compose_file(name: str) -> None:
    compose_schema_validator().validate(compose(name))


def test_schema_rejects_a_misspelt_key() -> None:
    # The validation above can fail: a typo in a service is caught.
    doc = copy.deepcopy(compose())
    doc["services"]["graft-worker"]["comand"] = doc["services"]["graft-worker"].pop("command")
    with pytest.raises(jsonschema.ValidationError):
        compose_schema_validator().validate(doc)


@pytest.mark.parametrize("name", FILES)
def test_local_paths_exist(name: str) -> None:
    doc = compose(name)
    for svc_name, svc in doc["services"].items():
        if "build" in svc:
            context = (COMPOSE / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), svc_name
        for source in mounts(svc).values():
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), (svc_name, source)
            else:
                assert source in doc["volumes"], (svc_name, source)


def test_server_and_worker_commands() -> None:
    services = graft_services(compose())
    assert set(services) == {"graft-server", "graft-worker"}
    server = graft_args(services["graft-server"]["command"])
    assert server.command == "serve" and server.no_worker and server.host == "0.0.0.0"
    worker = graft_args(services["graft-worker"]["command"])
    assert worker.command == "worker"
    # Both open the same store: the same named volume at the --data-dir of each.
    for svc, args in ((services["graft-server"], server), (services["graft-worker"], worker)):
        assert mounts(svc)[str(args.data_dir)] == "graft-data"
    published = {p.split(":")[-1] for p in services["graft-server"]["ports"]}
    assert {str(server.port), str(server.metrics_port)} <= published
    assert services["graft-worker"]["build"]["args"]["VARIANT"] == "cpu"
    # Compose waits stop_grace_period after SIGTERM before SIGKILL: the worker's
    # --stop-timeout (the wait for an epoch checkpoint) plus a last step and the release.
    assert seconds(services["graft-worker"]["stop_grace_period"]) >= worker.stop_timeout + 60
    assert seconds(services["graft-server"]["stop_grace_period"]) > server.grace_seconds


def test_worker_health_check_uses_the_image_script_on_its_metrics_port() -> None:
    worker = compose()["services"]["graft-worker"]
    port = graft_args(worker["command"]).metrics_port
    test = worker["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "/opt/graft/healthcheck.py"]
    assert test[3:] == ["--http", f"http://127.0.0.1:{port}/metrics"]
    assert worker["depends_on"]["graft-server"]["condition"] == "service_healthy"


def test_gpu_overlay_gives_the_worker_the_cuda_image_and_a_gpu() -> None:
    worker = with_gpu_overlay()["services"]["graft-worker"]
    assert graft_args(worker["command"]).device == "cuda"
    assert worker["build"]["args"]["VARIANT"] == "cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert mounts(worker)["/data"] == "graft-data"  # kept from compose.yaml


def test_prometheus_scrapes_the_services_and_ports_that_exist() -> None:
    doc = compose()
    prometheus = doc["services"]["prometheus"]
    config_target = "/etc/prometheus/prometheus.yml"
    config_path = (COMPOSE / mounts(prometheus)[config_target]).resolve()
    config = load_yaml(config_path)
    # Rule files are relative to the config, so they must be mounted beside it.
    for rule_file in config["rule_files"]:
        source = mounts(prometheus)[str(Path(config_target).parent / rule_file)]
        assert (COMPOSE / source).resolve() == config_path.parent / rule_file
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {SERVER_JOB, WORKER_JOB}
    server = graft_args(doc["services"]["graft-server"]["command"])
    worker = graft_args(doc["services"]["graft-worker"]["command"])
    assert jobs[SERVER_JOB]["static_configs"][0]["targets"] == [
        f"graft-server:{server.metrics_port}"
    ]
    (dns,) = jobs[WORKER_JOB]["dns_sd_configs"]
    assert dns["names"] == ["graft-worker"] and dns["port"] == worker.metrics_port


def test_grafana_is_provisioned_from_the_repository() -> None:
    doc = compose()
    grafana = mounts(doc["services"]["grafana"])
    provisioning = COMPOSE / grafana["/etc/grafana/provisioning/datasources"]
    source = load_yaml(provisioning / "prometheus.yml")["datasources"][0]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in doc["services"]
    providers = COMPOSE / grafana["/etc/grafana/provisioning/dashboards"]
    dashboards_dir = load_yaml(providers / "graft.yml")["providers"][0]["options"]["path"]
    assert (COMPOSE / grafana[dashboards_dir] / "graft.json").is_file()
    assert "9090:9090" in doc["services"]["prometheus"]["ports"]


def store_config(service: dict[str, Any]) -> Config:
    """The Config a graft container builds: its command's flags over its environment."""
    args = graft_args(service["command"])
    kw = env_defaults({k: interpolate(str(v)) for k, v in service.get("environment", {}).items()})
    if args.store_url:
        kw["store_url"] = args.store_url
    return Config(**kw)


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


@pytest.mark.parametrize(
    "files",
    [("compose.postgres.yaml",), ("compose.postgres.yaml", "compose.gpu.yaml")],
    ids=["postgres", "postgres+gpu"],
)
def test_postgres_overlay_puts_server_and_worker_on_its_database(files: tuple[str, ...]) -> None:
    doc = merged("compose.yaml", *files)
    compose_schema_validator().validate(doc)
    postgres = doc["services"]["postgres"]
    env = postgres["environment"]
    for name in ("graft-server", "graft-worker"):
        service = doc["services"][name]
        url = urlsplit(store_config(service).store_url)
        assert url.scheme == "postgresql" and url.hostname == "postgres", name
        assert url.hostname in doc["services"] and url.port == 5432
        assert (url.username, url.path) == (env["POSTGRES_USER"], "/" + env["POSTGRES_DB"])
        assert url.password is None  # from PGPASSWORD, the database's own password
        assert service["environment"]["PGPASSWORD"] == env["POSTGRES_PASSWORD"]
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert mounts(service)["/data"] == "graft-data"  # artifacts stay on the shared volume
    worker = doc["services"]["graft-worker"]
    assert worker["depends_on"]["graft-server"]["condition"] == "service_healthy"
    if "compose.gpu.yaml" in files:
        assert graft_args(worker["command"]).device == "cuda"
    assert mounts(postgres)["/var/lib/postgresql/data"] in doc["volumes"]


def test_postgres_overlay_health_check_and_connections() -> None:
    postgres = compose("compose.postgres.yaml")["services"]["postgres"]
    test = postgres["healthcheck"]["test"]
    assert test[:2] == ["CMD", "pg_isready"]
    assert test[test.index("-U") + 1] == postgres["environment"]["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == postgres["environment"]["POSTGRES_DB"]
    command = postgres["command"]
    max_connections = int(command[command.index("-c") + 1].removeprefix("max_connections="))
    assert max_connections >= 11 + 10 * 8  # the server and eight `--scale`d workers


def test_without_the_overlay_the_store_is_sqlite() -> None:
    for name, service in graft_services(compose()).items():
        assert store_config(service).store_url == "", name
