"""The health report: each role's JSON body is assembled from typed parts with the keys the probes read."""

from __future__ import annotations

from noisett_mcp import __version__
from noisett_mcp.health import (
    EngineHealth,
    HealthReport,
    QueueHealth,
    StorageHealth,
    WorkerHealth,
    health_response,
)


def test_a_standalone_process_reports_its_engine_and_queue_and_no_storage_for_the_local_folder() -> None:
    report = HealthReport(
        role="standalone",
        model="demo",
        variant="fast",
        engine=EngineHealth.of("ready", "cuda:0", None),
        queue=QueueHealth(depth=2, running=True, oldest_job_age_seconds=3.5),
    )
    assert report.body() == {
        "status": "ready",
        "model": "demo",
        "variant": "fast",
        "device": "cuda:0",
        "gpu_available": True,
        "version": __version__,
        "role": "standalone",
        "queue_depth": 2,
        "running": True,
    }


def test_an_engine_still_idle_or_loading_reads_loading_with_no_device_known() -> None:
    for state in ("idle", "loading"):
        body = HealthReport("standalone", "m", "full", engine=EngineHealth.of(state, None, None)).body()
        assert body["status"] == "loading"
        assert body["device"] is None and body["gpu_available"] is None
        assert "error" not in body


def test_a_failed_load_reports_its_error_and_answers_503() -> None:
    report = HealthReport(
        role="standalone",
        model="m",
        variant="full",
        engine=EngineHealth.of("error", None, "ModelUnavailable: no CUDA"),
        queue=QueueHealth(depth=0, running=False),
    )
    assert report.status == "error"
    assert report.body()["error"] == "ModelUnavailable: no CUDA"
    assert health_response(report).status_code == 503


def test_a_cpu_device_is_not_a_gpu() -> None:
    body = HealthReport("standalone", "m", "fast", engine=EngineHealth.of("ready", "cpu", None)).body()
    assert body["gpu_available"] is False


def test_a_front_is_ready_at_once_and_reports_the_oldest_waiting_job_but_no_device() -> None:
    report = HealthReport(
        role="front",
        model="m",
        variant="dev",
        queue=QueueHealth(depth=0, running=False, oldest_job_age_seconds=None),
        storage=StorageHealth(backend="azure-blob", container="generated-images", reachable=False, spooled=4),
    )
    assert report.body() == {
        "status": "ready",
        "model": "m",
        "variant": "dev",
        "version": __version__,
        "role": "front",
        "oldest_job_age_seconds": None,
        "queue_depth": 0,
        "running": False,
        "storage": {
            "backend": "azure-blob",
            "container": "generated-images",
            "reachable": False,
            "spooled": 4,
        },
    }
    assert health_response(report).status_code == 200


def test_a_worker_reports_its_jobs_and_no_queue() -> None:
    report = HealthReport(
        role="worker",
        model="m",
        variant="fast",
        engine=EngineHealth.of("loading", None, None),
        worker=WorkerHealth(jobs_done=7, job=None),
    )
    body = report.body()
    assert body["role"] == "worker" and body["jobs_done"] == 7 and body["job"] is None
    assert "queue_depth" not in body and "running" not in body and "storage" not in body
    assert health_response(report).status_code == 200, "a loading worker is not restarted by its probe"
