"""The cold start's stage tracker: stages in order, bytes into the running stage, and the texts that
/healthz and generate_image's progress show."""

from __future__ import annotations

from noisett_mcp.weights.stages import GIB, LoadStages, describe_bytes, process_age


def test_bytes_go_to_the_running_stage_and_the_snapshot_lists_every_stage_in_order() -> None:
    stages = LoadStages(since_process_start=False)
    assert stages.snapshot().stage == "waiting" and stages.progress_text() == "loading the model (waiting)"
    stages.expect(58 * GIB)
    stages.begin("first byte")
    stages.add(1024)
    stages.begin("component transformer")
    stages.add(31 * GIB)
    assert stages.progress_text() == "loading the model: 31 of 58 GiB"
    snapshot = stages.snapshot()
    assert snapshot.stage == "component transformer" and snapshot.bytes_loaded == 31 * GIB + 1024
    done, running = snapshot.stages
    assert done["name"] == "first byte" and done["bytes"] == 1024 and done["seconds"] is not None
    assert running["seconds"] is None  # still running
    stages.finish()
    names = [stage["name"] for stage in stages.snapshot().stages]
    assert names == ["first byte", "component transformer", "ready"]


def test_the_first_load_counts_from_the_process_start() -> None:
    first = LoadStages()
    assert first.now() >= process_age() - 1.0 > 0
    assert LoadStages(since_process_start=False).now() < first.now()


def test_sizes_below_a_gib_are_told_in_mib() -> None:
    assert describe_bytes(3 * 2**20, 9 * 2**20) == "3.0 of 9.0 MiB"
    assert describe_bytes(31 * GIB, 58 * GIB) == "31 of 58 GiB"
