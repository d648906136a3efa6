"""`KeyStore`: API keys, and `ApiKey`, what the store keeps of one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ApiKey:
    """An API key as the store keeps it: never the token, only its sha256 (graft.apikeys).
    `revoke_time` is None while the key is valid."""

    key_id: str
    tenant: str
    admin: bool
    name: str
    create_time: float
    revoke_time: float | None = None


@runtime_checkable
class KeyStore(Protocol):
    """API keys, kept by the sha256 of their tokens."""

    def add_api_key(
        self, key_id: str, token_hash: str, tenant: str, *, admin: bool = False, name: str = ""
    ) -> ApiKey:
        """Record a new key by the sha256 of its token (hex). AlreadyExists if `key_id` or
        `token_hash` is taken."""
        ...

    def api_key_by_hash(self, token_hash: str) -> ApiKey:
        """The key whose token hashes to `token_hash`, revoked or not, or NotFound."""
        ...

    def list_api_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    def revoke_api_key(self, key_id: str) -> ApiKey:
        """Revoke the key (from now on it authenticates nothing); revoking it again changes
        nothing. NotFound for an unknown id."""
        ...
