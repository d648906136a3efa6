"""Metrics (Prometheus) and structured logs for the server and the workers."""
