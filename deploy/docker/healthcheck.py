"""Container health check for Graft. Exit 0 iff healthy, 1 otherwise.

    healthcheck.py [TARGET] [--service NAME]   grpc.health.v1 Check; healthy iff SERVING
                                               (default 127.0.0.1:50051, service "")
    healthcheck.py --http URL                  healthy iff URL answers 200 (a worker's /metrics)

Only the standard library, grpcio and grpcio-health-checking (both in the image).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request


def check_grpc(target: str, service: str, timeout: float) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{target}: {exc.code().name} {exc.details()}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {service or '(server)'}: {status}")
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def check_http(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            status = int(reply.status)
    except OSError as exc:  # URLError, HTTPError, refused, timed out
        print(f"{url}: {exc}", file=sys.stderr)
        return False
    print(f"{url}: HTTP {status}")
    return status == 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051", help="gRPC host:port")
    parser.add_argument("--service", default="", help='health service name (default "")')
    parser.add_argument("--http", metavar="URL", help="check this URL instead of gRPC")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    args = parser.parse_args(argv)
    if args.http:
        ok = check_http(args.http, args.timeout)
    else:
        ok = check_grpc(args.target, args.service, args.timeout)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
