"""The optional Azure Monitor exporter: traces, metrics and the `noisett_mcp` logs to Application Insights."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from noisett_mcp import __version__
from noisett_mcp.config import Settings
from noisett_mcp.telemetry.metrics import SCOPE

SERVICE_NAME = "noisett-mcp"

log = logging.getLogger(__name__)


def setup(settings: Settings) -> bool:
    """Send traces, metrics and the `noisett_mcp` logs to Application Insights when
    APPLICATIONINSIGHTS_CONNECTION_STRING is set. Without it this does nothing, and costs nothing: the
    exporter (the `azure-monitor` extra) is imported only here."""
    secret = settings.applicationinsights_connection_string
    if secret is None or not secret.get_secret_value().strip():
        return False
    try:
        from azure.monitor.opentelemetry import configure_azure_monitor
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        log.warning(
            "APPLICATIONINSIGHTS_CONNECTION_STRING is set but the Azure Monitor exporter is not installed "
            "(pip install 'noisett-mcp[azure-monitor]'): telemetry stays off"
        )
        return False
    attributes = {"service.version": __version__}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = SERVICE_NAME
    for chatty in ("azure.monitor.opentelemetry", "azure.core.pipeline.policies.http_logging_policy"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    # The distro's default sampler keeps about 5 traces a second: the burst of spans at a cold start and the
    # MCP handshake use that up and drop the first generation's trace at random. Generations are few and
    # seconds long, so keep every trace unless the operator picks a sampler (OTEL_TRACES_SAMPLER).
    sampling = {} if os.environ.get("OTEL_TRACES_SAMPLER") else {"sampling_ratio": 1.0}
    configure_azure_monitor(
        connection_string=secret.get_secret_value(),
        # Only our own logs go to Application Insights; everything still reaches the console (Log Analytics).
        logger_name=SCOPE,
        resource=Resource.create(attributes),
        **sampling,
    )
    # Container Apps stops a replica with SIGTERM, and uvicorn re-raises it after its graceful shutdown:
    # with the default action the process would die before the exporters' atexit flush. Exit normally.
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_normally)
    log.info("telemetry: sending traces, metrics and logs to Azure Monitor")
    return True


def _exit_normally(signum: int, frame: object) -> None:
    sys.exit(0)
