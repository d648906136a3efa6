"""Authentication: who is calling, and which tenant's data the call may see.

`AuthInterceptor` reads the API key of every AdaptationService call (`authorization:
Bearer <key>`), looks its sha256 up in the store (graft.apikeys says why a plain hash) and
puts the caller's `Identity` into a contextvar for the servicer (`current_identity()`).
No key, an unknown key or a revoked one: UNAUTHENTICATED. There is no cache: every call
reads the key's row (one indexed read on the store pool), so a key revoked with `graft
keys revoke`, from any process, is refused from the next call on.

Services named in `open_services` (health checks and reflection by default) are never
asked for a key. With authentication off (`Config.auth`; the default on a loopback host)
every call is `LOCAL`: the default tenant, with the admin role, as before tenants existed.

Tenancy is enforced by the store queries the servicer makes with `Identity.scope`: another
tenant's job, model or upload is NOT_FOUND, exactly as one that does not exist, never
PERMISSION_DENIED (which would tell the caller that it exists).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import grpc

from graft import errors
from graft.api.errors import WrappingInterceptor, wrap_handler
from graft.apikeys import METADATA_KEY, bearer_token, hash_token
from graft.domain import DEFAULT_TENANT
from graft.store import JobStore


@dataclass(frozen=True)
class Identity:
    """The caller of an RPC: its tenant, whether it has the admin role, and its key."""

    tenant: str
    admin: bool = False
    key_id: str = ""  # "" when authentication is off

    @property
    def scope(self) -> str | None:
        """What the store confines this caller's reads to: its tenant, or None (every
        tenant) for an admin."""
        return None if self.admin else self.tenant

    def sees(self, tenant: str) -> bool:
        return self.admin or tenant == self.tenant


# Every call while authentication is off: the embedded default, a trusted local caller.
LOCAL = Identity(DEFAULT_TENANT, admin=True)

_IDENTITY: contextvars.ContextVar[Identity] = contextvars.ContextVar("graft_identity")


def current_identity() -> Identity:
    """The caller of the AdaptationService RPC being handled. Every such call passes the
    AuthInterceptor, so a LookupError here is a bug (and becomes INTERNAL)."""
    return _IDENTITY.get()


def admin_scrapes(store: JobStore) -> Callable[[str | None], bool]:
    """For /metrics (`Config.metrics_auth`): whether an HTTP Authorization header carries a
    valid admin key. Blocking: it runs on the metrics server's own thread."""

    def authorize(header: str | None) -> bool:
        try:
            token = bearer_token([(METADATA_KEY, header)] if header else [])
            key = store.api_key_by_hash(hash_token(token))
        except (errors.Unauthenticated, errors.NotFound):
            return False
        return key.admin and key.revoke_time is None

    return authorize


class AuthInterceptor(WrappingInterceptor):
    """Authenticates AdaptationService calls; install it inside the error boundary (which
    turns its Unauthenticated into the status) and outside admission control (a caller
    without a key takes no slot)."""

    def __init__(
        self,
        service: str,
        *,
        enabled: bool,
        open_services: Iterable[str],
        store: JobStore,
        executor: Executor,
    ) -> None:
        self.service = service
        self.enabled = enabled
        self.open_services = frozenset(open_services)
        if service in self.open_services:
            raise ValueError(f"{service} cannot be open: its calls need an identity")
        self.store = store
        self.executor = executor

    async def identify(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Identity:
        """The identity of a call with this metadata, or Unauthenticated."""
        if not self.enabled:
            return LOCAL
        token_hash = hash_token(bearer_token(metadata))
        loop = asyncio.get_running_loop()
        try:
            key = await loop.run_in_executor(self.executor, self.store.api_key_by_hash, token_hash)
        except errors.NotFound:
            key = None
        if key is None or key.revoke_time is not None:
            # One message for both: which keys once existed is nobody's business.
            raise errors.Unauthenticated("invalid API key (unknown or revoked)")
        return Identity(key.tenant, key.admin, key.key_id)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        service = method.split("/")[1] if method.count("/") == 2 else method
        if service in self.open_services:
            return handler
        if service != self.service and not self.enabled:
            return handler

        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.isasyncgenfunction(fn):

                async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    # Not reset afterwards: the value lives in this RPC's own task, and a
                    # generator may be finalised in another context, where a reset fails.
                    _IDENTITY.set(await self.identify(context.invocation_metadata()))
                    async for response in fn(request, context):
                        yield response

                return stream

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                token = _IDENTITY.set(await self.identify(context.invocation_metadata()))
                try:
                    return await fn(request, context)
                finally:
                    _IDENTITY.reset(token)

            return unary

        return wrap_handler(handler, wrap)
