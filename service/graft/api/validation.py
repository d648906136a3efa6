"""Checks of request fields shared by the RPC handlers: each failure is INVALID_ARGUMENT
naming the field."""

from __future__ import annotations

import re

from graft import errors
from graft.errors import quote

MAX_PAGE = 1000  # jobs or model versions in one list page

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_DATASET_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def require(ok: bool, field: str, description: str) -> None:
    """InvalidArgument on `field` ("`field` `description`") unless `ok`."""
    if not ok:
        raise errors.InvalidArgument.of(field, description)


def valid_job_id(value: str, field: str = "job_id") -> str:
    """`value` stripped, if it is a job id (32 hex digits)."""
    value = value.strip()
    require(bool(value), field, "is required")
    require(bool(_JOB_ID.match(value)), field, f"{quote(value)} is not a job id (32 hex digits)")
    return value


def valid_dataset_id(value: str, field: str = "dataset_id") -> str:
    """`value` stripped, if it can be an uploaded dataset's id (as UploadDataset returns)."""
    value = value.strip()
    require(bool(value), field, "is required")
    require(
        bool(_DATASET_ID.match(value)),
        field,
        "must be 1-64 letters, digits, '-' or '_' (as UploadDataset returned)",
    )
    return value
