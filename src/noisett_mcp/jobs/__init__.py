"""Generation jobs and the queues that carry them: the front's side of the queue.

- base.py: `Job`, the `JobQueue` seam, the `Runner` protocol (what the front may ask of a GPU runner)
  and the step timer behind every time estimate.
- local.py: the in-process queue with one worker (one GPU); azure.py: an Azure Storage queue between an
  always-on front and GPU workers.
- records.py: how a job's state is written to the store; progress.py: a job's state as MCP progress
  notifications.
- calls.py: which job an MCP request started, so that a client's cancel reaches it from any front.

What renders the jobs (the runner, the engine thread, `noisett-mcp worker`) lives in `gpu/`.
"""

from __future__ import annotations

from noisett_mcp.jobs.base import Job, JobExecutor, JobQueue, Runner
from noisett_mcp.jobs.local import LocalJobQueue

__all__ = ["Job", "JobExecutor", "JobQueue", "LocalJobQueue", "Runner"]
