"""Fixtures every test folder may use: a real PostgreSQL server for the store's tests, and
a real browser (Chromium) for the model reports' page."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.browser import INSTALL_HINT, find_chromium
from tests.postgres import REQUIRE_ENV, PostgresServer, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py), started the
    first time a test asks for it. Without PostgreSQL installed its tests are skipped,
    unless $GRAFT_TEST_POSTGRES is set (`make test` sets it): then they fail, since a
    skipped test is a missing one."""
    server = start_postgres()
    if isinstance(server, str):
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{server}; ${REQUIRE_ENV} is set, so the PostgreSQL tests must run")
        pytest.skip(server)
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database with the store's schema, for this test alone."""
    return postgres_server.new_database()


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's Chromium (tests/browser.py). Without it the browser tests are
    skipped, unless $GRAFT_TEST_POSTGRES is set (`make test` sets it and installs
    Chromium): then they fail, as the PostgreSQL tests do."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{INSTALL_HINT}; ${REQUIRE_ENV} is set, so the browser tests must run")
        pytest.skip(INSTALL_HINT)
    return binary
