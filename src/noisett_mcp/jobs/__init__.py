"""Generation jobs and the queues that carry them.

- base.py: `Job`, the `JobQueue` seam and the step timer behind every time estimate.
- local.py: the in-process queue with one worker (one GPU); azure.py: an Azure Storage queue between an
  always-on front and GPU workers.
- runner.py: renders a job on the engine; records.py: how a job's state is written to the store;
  progress.py: a job's state as MCP progress notifications.
- worker.py: `noisett-mcp worker`, a GPU worker on the Azure queue.
- calls.py: which job an MCP request started, so that a client's cancel reaches it from any front.
- specs.py: a request resolved into the spec its job renders (style applied, defaults filled in).
- engine_thread.py: the one thread the runner's engine runs on.
"""

from __future__ import annotations

from noisett_mcp.config import Settings
from noisett_mcp.jobs.base import Job, JobQueue
from noisett_mcp.jobs.local import LocalJobQueue
from noisett_mcp.jobs.runner import JobRunner
from noisett_mcp.storage.base import ImageStore
from noisett_mcp.styles.catalog import StyleCatalog
from noisett_mcp.telemetry import Telemetry

__all__ = ["Job", "JobQueue", "JobRunner", "LocalJobQueue", "open_queue"]


def open_queue(settings: Settings, store: ImageStore, styles: StyleCatalog, telemetry: Telemetry) -> JobQueue:
    """The queue the settings ask for: an Azure Storage queue to GPU workers (NOISETT_QUEUE=azure), or
    this process's own GPU. The Azure SDK is imported only for the first."""
    if settings.queue == "azure":
        from noisett_mcp.jobs.azure import AzureJobQueue

        return AzureJobQueue(settings, store)
    runner = JobRunner(settings, store, styles, telemetry)
    return LocalJobQueue(runner, settings.max_queue, settings.max_queue_per_user)
