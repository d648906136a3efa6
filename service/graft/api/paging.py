"""Page tokens for the list RPCs: opaque to callers, bound to the list and filter they
were made for.

A token is base64url of JSON `[kind, filter digest, cursor]`. The cursor is the store's
keyset position (a job's insertion number; a model version's name, tenant and number), so
a page is one index range scan and rows added meanwhile never shift later pages. The
digest makes a token sent with another filter (or to another list) an INVALID_ARGUMENT
instead of a page of something else. Tokens are not secret: the store scopes every page
to the caller's tenant whatever the cursor says.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from graft.errors import InvalidArgument

MAX_TOKEN_CHARS = 2048


def _digest(kind: str, filters: Any) -> str:
    return hashlib.sha256(json.dumps([kind, filters]).encode()).hexdigest()[:16]


def encode(kind: str, filters: Any, cursor: Any) -> str:
    """The token of the page after `cursor` of list `kind` under `filters`."""
    raw = json.dumps([kind, _digest(kind, filters), cursor], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode(token: str, kind: str, filters: Any, field: str = "page_token") -> Any:
    """The cursor `token` carries (None for an empty token); InvalidArgument on `field`
    for a token that is malformed or was made for another list or filter."""
    if not token:
        return None
    try:
        if len(token) > MAX_TOKEN_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        made_for, digest, cursor = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        raise InvalidArgument.of(field, "is not a page token of this server") from None
    if made_for != kind or digest != _digest(kind, filters):
        raise InvalidArgument.of(
            field, "was made for another list or filter; send the same filter as its page"
        )
    return cursor
