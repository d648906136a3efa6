"""API keys: how tokens are made, hashed and read from call metadata.

A token is `graft_` followed by 32 bytes from `secrets` (256 bits) in base64url. The store
keeps only its sha256, never the token. A plain, fast hash is enough here, and a slow
password hash (bcrypt, scrypt, argon2) would buy nothing: slow hashes exist to make guessing
*low-entropy* secrets (passwords people choose) expensive, offline, after the hash table
leaks. A 256-bit random token cannot be guessed however fast each guess is (2^255 tries on
average), and sha256 is preimage-resistant, so a leaked hash does not give the token back.
Because tokens are unique random strings, there is nothing for a salt to defeat either. A
slow hash would instead cost ~100 ms of CPU on *every* authenticated RPC, which is a gift
to whoever floods the server with bad keys.

Keys are looked up by the hash (a unique index), so no token is ever compared byte by byte
in Python; the lookup's timing tells at most something about a hash, which says nothing
about any token.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Iterable

from graft.errors import InvalidArgument, Unauthenticated

TOKEN_PREFIX = "graft_"
TOKEN_BYTES = 32
METADATA_KEY = "authorization"  # gRPC metadata keys are lower case

# Tenant names become folder names in the registry (`.tenants/<tenant>/`): the characters
# of model names, never starting with '.'.
_TENANT = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}")


def new_token() -> tuple[str, str]:
    """A fresh (key_id, token). The key id names the key in listings and `revoke`; the
    token is shown once, to the person who creates it."""
    raw = secrets.token_bytes(TOKEN_BYTES)
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    return secrets.token_hex(6), token


def hash_token(token: str) -> str:
    """The sha256 of `token`, hex: what the store keeps and looks keys up by."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_tenant(tenant: str, field: str = "tenant") -> str:
    """`tenant` if it is a valid tenant name (1-64 letters, digits, '-', '_', '.'; not
    starting with '.'), else InvalidArgument."""
    if not _TENANT.fullmatch(tenant):
        raise InvalidArgument.of(
            field, "a tenant is 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
        )
    return tenant


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the call's `authorization: Bearer <token>` metadata; Unauthenticated
    when there is none, or it is not a bearer token. The token itself is never quoted."""
    values = [v for k, v in metadata or () if k.lower() == METADATA_KEY]
    if not values:
        raise Unauthenticated(
            "this server requires an API key: send the metadata 'authorization: Bearer <key>'"
            " (graft --api-key, $GRAFT_API_KEY, or Client(api_key=...))"
        )
    if len(values) > 1:
        raise Unauthenticated("more than one 'authorization' metadata entry")
    value = values[0]
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, token = text.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the 'authorization' metadata must be 'Bearer <key>'")
    return token
