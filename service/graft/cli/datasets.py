"""`graft upload` and `graft datasets`: uploaded datasets."""

from __future__ import annotations

import json

from graft.cli.context import EXIT_OK, Context
from graft.cli.render import fmt_size, fmt_time, print_fields, print_json, print_table


def cmd_upload(ctx: Context) -> int:
    a = ctx.args
    with ctx.client() as client:
        result = client.upload_dataset(a.archive, chunk_size=a.chunk_size)
    if a.json:
        print_json(result, ctx.out)
        return EXIT_OK
    print_fields(
        [
            ("dataset_id", result.dataset_id),
            ("size", fmt_size(result.size_bytes)),
            (
                "images",
                f"{result.images} in {result.classes} classes"
                + (f", {result.skipped_files} files skipped" if result.skipped_files else ""),
            ),
        ],
        ctx.out,
    )
    print(f"train with: graft train NAME --dataset-id {result.dataset_id}", file=ctx.err)
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
    """`graft datasets delete DATASET_ID`."""
    a = ctx.args
    with ctx.client() as client:
        freed = client.delete_dataset(a.dataset_id)
    if a.json:
        print(json.dumps({"dataset_id": a.dataset_id, "freed_bytes": freed}), file=ctx.out)
    else:
        print(f"deleted dataset {a.dataset_id} ({fmt_size(freed)} freed)", file=ctx.out)
    return EXIT_OK


def cmd_datasets(ctx: Context) -> int:
    """`graft datasets [list]`: the uploads, with their sizes and expiry."""
    a = ctx.args
    with ctx.client() as client:
        listing = client.list_datasets()
    if a.json:
        print_json(listing, ctx.out)
        return EXIT_OK
    rows = [
        [
            d.dataset_id,
            d.tenant,
            d.filename,
            fmt_size(d.archive_bytes + d.extracted_bytes),
            fmt_time(d.create_time),
            fmt_time(d.last_used_time),
            fmt_time(d.expire_time) if d.HasField("expire_time") else "never",
        ]
        for d in listing.datasets
    ]
    header = ["DATASET", "TENANT", "FILE", "STORED", "UPLOADED", "LAST USED", "EXPIRES"]
    print_table(rows, header, ctx.out)
    quota = fmt_size(listing.quota_bytes) if listing.quota_bytes else "no quota"
    print(f"{fmt_size(listing.used_bytes)} stored; quota {quota}", file=ctx.out)
    return EXIT_OK
