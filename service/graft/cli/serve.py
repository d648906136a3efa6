"""`graft serve` and `graft worker`: the long-running processes."""

from __future__ import annotations

from graft.cli.context import Context, config_from


def cmd_serve(ctx: Context) -> int:
    a = ctx.args
    config = config_from(
        host=a.host,
        port=a.port,
        metrics_port=a.metrics_port,
        data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None,
        artifacts_dir=a.artifacts_dir.expanduser().resolve() if a.artifacts_dir else None,
        data_roots=tuple(p.expanduser().resolve() for p in a.data_roots) if a.data_roots else None,
        store_url=a.store_url,
        embedded_worker=False if a.no_worker else None,
        lease_seconds=a.lease_seconds,
        device=a.device,
        worker_metrics_port=a.worker_metrics_port,
        max_message_bytes=a.max_message_bytes,
        max_upload_bytes=a.max_upload_bytes,
        upload_quota_bytes=a.upload_quota_bytes,
        upload_ttl_seconds=a.upload_ttl_seconds,
        extract_cache_bytes=a.extract_cache_bytes,
        grace_seconds=a.grace_seconds,
        rpc_limits=tuple(a.rpc_limits) if a.rpc_limits else None,
        max_active_jobs_per_model=a.max_jobs_per_model,
        predict_max_batch=a.predict_max_batch,
        predict_max_delay_ms=a.predict_max_delay_ms,
        predict_runners=a.predict_runners,
        log_format=a.log_format,
        log_level=a.log_level,
        auth=a.auth,
        auth_open_services=tuple(a.auth_open_services) if a.auth_open_services else None,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        health_port=a.health_port,
        metrics_auth=a.metrics_auth,
    )
    try:
        from graft.api.admission import parse_limits

        parse_limits(config.rpc_limits)
    except ValueError as exc:
        a.command_parser.error(str(exc))
    from graft.server import run_server

    return run_server(config)


def cmd_worker(ctx: Context) -> int:
    a = ctx.args
    config = config_from(
        host=a.host,
        data_dir=a.data_dir.expanduser().resolve() if a.data_dir else None,
        artifacts_dir=a.artifacts_dir.expanduser().resolve() if a.artifacts_dir else None,
        data_roots=tuple(p.expanduser().resolve() for p in a.data_roots) if a.data_roots else None,
        store_url=a.store_url,
        worker_metrics_port=a.metrics_port,
        lease_seconds=a.lease_seconds,
        device=a.device,
        log_format=a.log_format,
        log_level=a.log_level,
        stop_timeout_seconds=a.stop_timeout,
        lanes=tuple(dict.fromkeys(a.lanes)) if a.lanes else None,
    )
    from graft.worker import run_worker

    return run_worker(config, a.worker_id)
