"""The health report, shared by the MCP server and the GPU worker, typed and assembled in one place.

Each part comes from its owner: the engine's from the GPU runner, the queue's from the service, the
storage's from the store, the worker's from `noisett-mcp worker`. `HealthReport.body()` is the JSON that
/healthz and /health serve: 200 while the process serves (loading included, so a probe does not restart a
replica that is still loading the model), 503 once its model failed to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from starlette.responses import JSONResponse

from noisett_mcp import __version__
from noisett_mcp.weights.stages import LoadProgress

EngineState = Literal["idle", "loading", "ready", "error", "unloaded"]
Status = Literal["loading", "ready", "error"]
Role = Literal["standalone", "front", "worker"]


@dataclass(frozen=True)
class EngineHealth:
    """The runner's part: `loading` until the model is ready, `error` if it failed. An idle-unloaded
    model still serves (`ready`, `model_loaded` false): the next job loads it again."""

    status: Status
    device: str | None
    error: str | None = None
    model_loaded: bool = True
    load: LoadProgress | None = None

    @classmethod
    def of(
        cls, state: EngineState, device: str | None, error: str | None, load: LoadProgress | None = None
    ) -> EngineHealth:
        status: Status = (
            "ready" if state in ("ready", "unloaded") else "error" if state == "error" else "loading"
        )
        return cls(status, device, error, model_loaded=state != "unloaded", load=load)


@dataclass(frozen=True)
class QueueHealth:
    """The queue's part, as the service sees it. `oldest_job_age_seconds` is reported by a front only
    (its queue is shared with the workers; a standalone process's line is its own)."""

    depth: int
    running: bool
    oldest_job_age_seconds: float | None = None


@dataclass(frozen=True)
class StorageHealth:
    """The store's part (Blob only): an outage does not fail the probe (images wait in the spool)."""

    backend: str
    container: str
    reachable: bool
    spooled: int


@dataclass(frozen=True)
class WorkerHealth:
    """A GPU worker's part: how many jobs it finished, and the one in hand."""

    jobs_done: int
    job: str | None


@dataclass(frozen=True)
class HealthReport:
    role: Role
    model: str
    variant: str
    engine: EngineHealth | None = None  # None on a front: its GPU workers report their own
    queue: QueueHealth | None = None  # None on a worker: the queue is the front's
    storage: StorageHealth | None = None  # None for the local folder
    worker: WorkerHealth | None = None
    version: str = __version__

    @property
    def status(self) -> Status:
        return self.engine.status if self.engine is not None else "ready"

    def body(self) -> dict[str, Any]:
        """The JSON body, with the keys the probes, dashboards and tests read."""
        body: dict[str, Any] = {"status": self.status, "model": self.model, "variant": self.variant}
        if self.engine is not None:
            device = self.engine.device
            body |= {"device": device, "gpu_available": device.startswith("cuda") if device else None}
        body["version"] = self.version
        if self.engine is not None:
            if self.engine.error:
                body["error"] = self.engine.error
            if not self.engine.model_loaded:
                body["model_loaded"] = False
            if self.engine.load is not None:
                body["load"] = self.engine.load.body()
        body["role"] = self.role
        if self.role == "front" and self.queue is not None:
            body["oldest_job_age_seconds"] = self.queue.oldest_job_age_seconds
        if self.worker is not None:
            body |= {"jobs_done": self.worker.jobs_done, "job": self.worker.job}
        if self.queue is not None:
            body |= {"queue_depth": self.queue.depth, "running": self.queue.running}
        if self.storage is not None:
            body["storage"] = {
                "backend": self.storage.backend,
                "container": self.storage.container,
                "reachable": self.storage.reachable,
                "spooled": self.storage.spooled,
            }
        return body


def health_response(report: HealthReport) -> JSONResponse:
    return JSONResponse(report.body(), status_code=503 if report.status == "error" else 200)
