"""The metric catalogue that deploy/ is checked against is the one the service defines."""

from __future__ import annotations

import re

from tests.deploy.common import METRICS, REPO

# Where the service defines its metrics: the server's and worker's, and the store's collector.
METRICS_SOURCES = [
    REPO / "service" / "graft" / "observability" / name
    for name in ("metrics.py", "store_metrics.py")
]


def test_catalogue_matches_the_names_the_service_defines() -> None:
    source = "\n".join(path.read_text() for path in METRICS_SOURCES)
    defined = set(re.findall(r'"((?:graft|grpc_server)_[a-z0-9_]+)"', source))
    assert defined, f"no metric names found in {METRICS_SOURCES}"
    missing = defined - set(METRICS)
    gone = set(METRICS) - defined
    assert not missing and not gone, (
        f"the service defines {sorted(missing)} that tests/deploy/common.py lacks, and "
        f"no longer defines {sorted(gone)}: update the catalogue, the Grafana dashboard, "
        "the alerts and docs/OPERATIONS.md together"
    )
