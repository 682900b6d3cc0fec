"""Telemetry: OpenTelemetry traces and metrics for generations (metrics.py), the optional Azure Monitor
exporter (monitor.py), and structured logs with secrets redacted (logs.py).

It takes plain values from its callers (labels, counts, seconds): it knows nothing of jobs or queues.
"""

from __future__ import annotations

from noisett_mcp.telemetry.logs import JsonFormatter, configure_logging, redact
from noisett_mcp.telemetry.metrics import SCOPE, JobLabels, Telemetry, error_kind
from noisett_mcp.telemetry.monitor import SERVICE_NAME, setup

__all__ = [
    "SCOPE",
    "SERVICE_NAME",
    "JobLabels",
    "JsonFormatter",
    "Telemetry",
    "configure_logging",
    "error_kind",
    "redact",
    "setup",
]
