"""`graft keys`: API keys, straight on the server's store (run it where the data directory
is: `kubectl exec deploy/graft-server -- graft keys ...`, or anywhere that reaches the
PostgreSQL store: `--store URL`). Tokens are shown once, at
creation; the store keeps only their sha256. The store modules are imported only when a
`keys` command runs, so the client commands start fast."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from graft.cli.context import EXIT_ERROR, EXIT_OK, Context, config_from
from graft.cli.render import fmt_epoch, print_fields, print_table

if TYPE_CHECKING:
    from graft.store import ApiKey, JobStore


def cmd_create(ctx: Context) -> int:
    """`graft keys create --tenant T [--admin] [--name NOTE]`."""
    a = ctx.args
    if not a.tenant:
        ctx.parser.error("keys create needs --tenant")

    def create(store: JobStore) -> None:
        from graft.apikeys import hash_token, new_token, validate_tenant

        key_id, token = new_token()
        key = store.add_api_key(
            key_id,
            hash_token(token),
            validate_tenant(a.tenant),
            admin=a.admin,
            name=a.name,
        )
        out = {**_fields(key), "token": token}
        if a.json:
            print(json.dumps(out, indent=2), file=ctx.out)
        else:
            print_fields([(k, str(v)) for k, v in out.items() if v], ctx.out)
            print(
                "the token is shown only now: give it to its user"
                " (graft --api-key / $GRAFT_API_KEY)",
                file=ctx.err,
            )

    return _on_store(ctx, create)


def cmd_list(ctx: Context) -> int:
    """`graft keys [list]`."""

    def list_keys(store: JobStore) -> None:
        keys = [_fields(k) for k in store.list_api_keys()]
        if ctx.args.json:
            print(json.dumps(keys, indent=2), file=ctx.out)
        else:
            header = ["KEY", "TENANT", "ROLE", "NAME", "CREATED", "REVOKED"]
            print_table([list(k.values()) for k in keys], header, ctx.out)

    return _on_store(ctx, list_keys)


def cmd_revoke(ctx: Context) -> int:
    """`graft keys revoke KEY_ID`."""

    def revoke(store: JobStore) -> None:
        key = store.revoke_api_key(ctx.args.key_id)
        if ctx.args.json:
            print(json.dumps(_fields(key), indent=2), file=ctx.out)
        else:
            print(f"revoked {key.key_id} (tenant {key.tenant})", file=ctx.out)

    return _on_store(ctx, revoke)


def _on_store(ctx: Context, action: Callable[[JobStore], None]) -> int:
    """Runs `action` on the server's store: --store's database, or the SQLite file of
    --data-dir, which must exist already (a typo'd directory creates nothing); store errors
    print as `error: NotFound: ...`, status 2."""
    from graft import errors
    from graft.store import open_store

    a = ctx.args
    config = config_from(
        data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None,
        store_url=a.store_url,
    )
    if not config.store_url and not config.store_path.is_file():
        print(
            f"error: no Graft store at {config.store_path}: give the server's --data-dir"
            " (or $GRAFT_DATA_DIR), where `graft serve` has run",
            file=ctx.err,
        )
        return EXIT_ERROR
    try:
        store = open_store(config)
    except errors.GraftError as exc:  # the database is unreachable, or newer than we are
        print(f"error: {type(exc).__name__}: {exc.message}", file=ctx.err)
        return EXIT_ERROR
    try:
        action(store)
    except errors.GraftError as exc:
        print(f"error: {type(exc).__name__}: {exc.message}", file=ctx.err)
        return EXIT_ERROR
    finally:
        store.close()
    return EXIT_OK


def _fields(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "tenant": key.tenant,
        "role": "admin" if key.admin else "tenant",
        "name": key.name,
        "created": fmt_epoch(key.create_time),
        "revoked": fmt_epoch(key.revoke_time) if key.revoke_time else "",
    }
