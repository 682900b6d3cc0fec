"""The queue message: a job survives the wire whole, trace context included."""

from __future__ import annotations

import json

from noisett_mcp.jobs.azure import JobMessage
from tests.unit.test_jobs_local import make_job


def test_a_job_round_trips_through_its_message() -> None:
    job = make_job(steps=7, count=3)
    job.owner = "tenant/user"
    message = JobMessage.of(job)
    decoded = JobMessage.decode(message.encode()).job()
    assert decoded.id == job.id and decoded.image_ids == job.image_ids and decoded.owner == "tenant/user"
    assert decoded.spec == job.spec and decoded.created_at == job.created_at
    assert decoded.status == "queued" and decoded.steps_done == 0


def test_the_message_is_compact_json() -> None:
    text = JobMessage.of(make_job()).encode()
    assert ": " not in text and json.loads(text)["job_id"] == "0" * 32


def test_a_source_image_never_travels_in_the_message() -> None:
    """A Storage queue message holds 64 KiB: the worker loads the source from the store by sha256."""
    job = make_job()
    job.spec = job.spec.model_copy(update={"source_sha256": "a" * 64, "strength": 0.5})
    job.source = b"\x89PNG" + bytes(5 * 2**20)
    text = JobMessage.of(job).encode()
    assert len(text) < 4096
    decoded = JobMessage.decode(text).job()
    assert decoded.source is None and decoded.spec.source_sha256 == "a" * 64 and decoded.spec.strength == 0.5
