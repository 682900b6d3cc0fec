"""A job's image records: each image's share of the steps, and the record's own fields."""

from __future__ import annotations

from noisett_mcp.jobs.records import finished_record, image_progress, image_record
from tests.unit.test_jobs_local import make_job


def test_each_image_counts_its_own_steps_plus_one_for_storing() -> None:
    job = make_job(steps=4, count=2)
    job.steps_done = 6  # image 1 rendered (4), image 2 half-way (2)
    assert image_progress(job, 1) == 2 / 5
    assert image_progress(job, 0) == 4 / 5, "rendered but not stored is not done"
    job.images_done = 1
    assert image_progress(job, 0) == 1.0


def test_a_record_carries_the_seed_of_its_image_and_parameters_leave_out_job_state() -> None:
    job = make_job(steps=4, count=2)
    record = image_record(job, 1)
    assert record.id == job.image_ids[1] and record.uri == f"image://{job.image_ids[1]}" and record.seed == 1
    assert record.status == "queued" and record.job_id == job.id
    final = finished_record(job, 1, 64, 48, {"torch": "x"})
    assert final.status == "done" and final.progress == 1.0 and final.height == 48 and final.finished_at
    parameters = final.parameters()
    assert not {"status", "progress", "error", "steps_done", "uri"} & set(parameters)
    assert parameters["seed"] == 1 and parameters["versions"] == {"torch": "x"}
