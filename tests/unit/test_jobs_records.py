"""A job's image records: each image's share of the steps, and the record's own fields."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from noisett_mcp.jobs.records import PROCESS_ID, finished_record, image_progress, image_record, process_gone
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


def test_the_images_of_a_batch_advance_together_and_the_record_says_which_render_together() -> None:
    job = make_job(steps=4, count=4)
    job.images_done, job.batch = 1, range(1, 4)  # image 0 was stored; images 1-3 render in one call
    job.steps_done = 4 + 2 * 3  # two denoising steps of the batch: each of its images has 2 of 4
    assert [image_progress(job, i) for i in range(4)] == [1.0, 2 / 5, 2 / 5, 2 / 5]
    assert (
        image_record(job, 2).batch == [1, 4] and "batch" not in finished_record(job, 2, 8, 8, {}).parameters()
    )


def test_a_record_names_its_process_and_a_gone_one_is_told_from_a_live_one() -> None:
    host = socket.gethostname()
    assert PROCESS_ID.startswith(f"{host}:{os.getpid()}:")
    assert not process_gone(PROCESS_ID) and not process_gone(None)
    assert process_gone(f"{host}:{os.getpid()}:00000000"), "our pid with another token: before a restart"
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    assert process_gone(f"{host}:{done.stdout.strip()}:abcd")
    assert not process_gone(f"another-host:{done.stdout.strip()}:abcd"), "elsewhere: only a heartbeat tells"
