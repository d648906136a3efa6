"""Choosing the job store: `store_url` in the config (--store, $GRAFT_STORE_URL), SQLite by
default, PostgreSQL by URL, the same for the server, its workers and `graft keys`; the
URL's password never printed or stored with a job."""

from __future__ import annotations

import json
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from graft import cli
from graft.config import Config, env_defaults, redact_url
from graft.store import SqliteJobStore, open_store
from graft.store.postgres import PostgresJobStore
from graft.supervisor import embedded_supervisors

URL = "postgresql://graft:s3cret@db.internal:5432/graft?sslmode=require"


def test_sqlite_in_the_data_directory_stays_the_default(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    assert config.store_url == "" and config.store_name == str(tmp_path / "graft.sqlite3")
    store = open_store(config)
    assert isinstance(store, SqliteJobStore) and store.path == tmp_path / "graft.sqlite3"
    store.close()


@pytest.mark.parametrize(
    "url",
    [
        "mysql://u:s3cret@h/db",
        "sqlite:///tmp/graft.sqlite3",
        "/var/lib/graft/graft.sqlite3",
        "postgresql:db",  # not a URL: no //
    ],
)
def test_anything_but_a_postgres_url_is_refused_clearly(url: str) -> None:
    with pytest.raises(ValueError, match=r"must be empty .* or a\s+postgresql:// URL") as refused:
        Config(store_url=url)
    assert "s3cret" not in str(refused.value)


def test_the_password_is_masked_where_the_config_is_shown_or_kept() -> None:
    config = Config(store_url=URL)
    assert config.store_name == "postgresql://graft:***@db.internal:5432/graft?sslmode=require"
    assert "s3cret" not in config.public_json()
    assert json.loads(config.public_json())["store_url"] == config.store_name
    # The worker processes get everything: to_json round-trips.
    assert Config.from_dict(json.loads(config.to_json())).store_url == URL
    assert redact_url("postgresql:///graft?host=/run/pg&password=pw") == (
        "postgresql:///graft?host=/run/pg&password=***"
    )
    assert redact_url("postgresql://db/graft") == "postgresql://db/graft"


def test_the_environment_names_the_store() -> None:
    assert env_defaults({"GRAFT_STORE_URL": URL})["store_url"] == URL
    assert "store_url" not in env_defaults({})


def _capture(monkeypatch: pytest.MonkeyPatch, module: str, function: str) -> list[Config]:
    seen: list[Config] = []

    def run(config: Config, *args: Any) -> int:
        seen.append(config)
        return 0

    fake = types.ModuleType(module)
    setattr(fake, function, run)
    monkeypatch.setitem(sys.modules, module, fake)
    return seen


def test_serve_and_worker_take_the_store_flag_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served = _capture(monkeypatch, "graft.server", "run_server")
    worked = _capture(monkeypatch, "graft.worker", "run_worker")
    monkeypatch.setenv("GRAFT_STORE_URL", "postgresql://env-host/graft")
    assert cli.main(["serve", "--store", URL, "--data-dir", str(tmp_path)]) == 0
    assert cli.main(["worker", "--store", URL]) == 0
    assert cli.main(["worker"]) == 0
    assert served[0].store_url == URL and worked[0].store_url == URL
    assert worked[1].store_url == "postgresql://env-host/graft"  # no flag: the environment


def test_a_bad_store_flag_is_an_error_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _capture(monkeypatch, "graft.server", "run_server")
    assert cli.main(["serve", "--store", "mysql://u:pw@h/db"]) == 2
    err = capsys.readouterr().err
    assert "postgresql:// URL" in err and "Traceback" not in err and ":pw@" not in err


def test_embedded_workers_open_the_servers_store(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, store_url=URL)
    for supervisor in embedded_supervisors(config):
        path = supervisor.write_config()
        assert Config.from_dict(json.loads(path.read_text())).store_url == URL
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the password


@pytest.mark.postgres
def test_keys_on_the_postgres_store(postgres_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--tenant", "acme", "--store", postgres_url]) == 0
    out = capsys.readouterr().out
    key_id = dict(line.split(None, 1) for line in out.splitlines())["key_id"]
    with PostgresJobStore(postgres_url) as store:
        assert [k.key_id for k in store.list_api_keys()] == [key_id]
    unreachable = "postgresql://nobody@127.0.0.1:1/graft"
    assert cli.main(["keys", "list", "--store", unreachable]) == 2
    assert "error: Unavailable: job store postgresql://nobody@127.0.0.1:1/graft is unreachable" in (
        capsys.readouterr().err
    )


def test_server_and_worker_stop_cleanly_when_the_store_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from graft.server import serve
    from graft.worker import worker

    monkeypatch.setattr(worker, "setup_logging", lambda *args, **kwargs: None)
    config = Config(data_dir=tmp_path, store_url="postgresql://graft:pw@127.0.0.1:1/graft")
    assert asyncio.run(serve(config)) == 1
    assert worker.run_worker(config) == 1
    refusals = [
        r.getMessage() for r in caplog.records if "cannot open the job store" in r.getMessage()
    ]
    assert len(refusals) == 2
    assert all("graft:***@127.0.0.1:1/graft" in m and "unreachable" in m for m in refusals)
