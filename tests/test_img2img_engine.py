"""Image-to-image in the engine and the runner, on the demo model (the real HiDreamImagePipeline): which
schedulers can start mid-schedule, and a GPU worker's path, which loads the source from the store."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchLCMScheduler, UniPCMultistepScheduler
from mcp import Client
from PIL import Image

from noisett_mcp.config import Settings
from noisett_mcp.engine.config import EngineConfig
from noisett_mcp.engine.pipeline import Engine
from noisett_mcp.errors import ImageToImageUnsupported
from noisett_mcp.jobs import Job
from noisett_mcp.schemas import GenerationSpec, new_image_id
from noisett_mcp.server import build_server
from noisett_mcp.service import Noisett
from tests.test_img2img import SOURCE, SOURCE_B64, picture

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    cache = tmp_path_factory.mktemp("model-cache")
    settings = Settings(model="demo", data_dir=cache / "data", model_cache_dir=cache, preload=False)
    engine = Engine(EngineConfig.from_settings(settings))
    shipped = engine.pipe.scheduler
    yield engine
    engine.pipe.scheduler = shipped


def spec(strength: float | None, steps: int = 16) -> GenerationSpec:
    return GenerationSpec(
        prompt="a harbour",
        width=64,
        height=64,
        steps=steps,
        guidance=0.0,
        seeds=[9],
        model="demo",
        variant="fast",
        strength=strength,
        source_sha256=None if strength is None else "0" * 64,
    )


def run(engine: Engine, strength: float | None) -> Image.Image:
    return engine.generate(spec(strength), 0, lambda _: None, lambda: False, None, picture())


SCHEDULERS: dict[str, Callable[[], Any]] = {
    # What HiDream-I1-Fast and -Dev ship (their Hub configs), and the Euler scheduler, shifted both ways.
    "lcm-shift-3": lambda: FlowMatchLCMScheduler(shift=3.0),
    "lcm-shift-6": lambda: FlowMatchLCMScheduler(shift=6.0),
    "euler-shift-3": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    "euler-dynamic": lambda: FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, time_shift_type="exponential"
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_flow_matching_schedulers_run_the_tail_of_the_text_to_image_schedule(
    engine: Engine, name: str
) -> None:
    engine.pipe.scheduler = SCHEDULERS[name]()
    run(engine, None)
    full = engine.pipe.scheduler.timesteps.clone()  # what text-to-image ran: 16 steps
    run(engine, 0.6)  # 10 steps from the noised source
    tail = engine.pipe.scheduler.timesteps
    assert len(tail) == 10
    assert np.allclose(tail.numpy(), full[6:].numpy(), atol=1e-2), (tail, full)


@pytest.mark.parametrize("strength", [None, 0.6])
def test_dev_and_fast_s_scheduler_gives_the_same_pixels_for_the_same_seed(
    engine: Engine, strength: float | None
) -> None:
    """FlowMatchLCMScheduler draws noise in every step: from the image's generator, not torch's global one."""
    engine.pipe.scheduler = FlowMatchLCMScheduler(shift=3.0)
    first, again = (np.asarray(run(engine, strength)) for _ in range(2))
    other_seed = engine.generate(
        spec(strength).model_copy(update={"seeds": [10]}), 0, lambda _: None, lambda: False, None, picture()
    )
    assert np.array_equal(first, again)
    assert not np.array_equal(first, np.asarray(other_seed))


def test_full_s_unipc_scheduler_is_refused_clearly(engine: Engine) -> None:
    engine.pipe.scheduler = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"
    )
    with pytest.raises(ImageToImageUnsupported, match=r"UniPCMultistepScheduler\) cannot start part-way"):
        run(engine, 0.5)
    run(engine, None)  # text-to-image still works with it


def test_a_scheduler_that_respaces_its_sigmas_is_refused(engine: Engine) -> None:
    engine.pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True)
    with pytest.raises(ImageToImageUnsupported, match="does not keep a schedule that starts part-way"):
        run(engine, 0.5)


async def test_a_server_on_hidream_full_refuses_a_source_and_keeps_serving(
    make_settings: Callable[..., Settings],
) -> None:
    async with Noisett(make_settings(variant="full")) as service, Client(build_server(service)) as client:
        result = await client.call_tool(
            "generate_image", {"prompt": "a harbour", "steps": 1, "source_image": SOURCE_B64}
        )
        assert result.is_error
        assert (
            "runs HiDream-I1-Full" in result.content[0].text
            and "-Dev and -Fast can" in result.content[0].text
        )
        assert not (await client.call_tool("generate_image", {"prompt": "a harbour", "steps": 1})).is_error


async def test_a_model_whose_scheduler_cannot_start_midway_fails_the_job_with_the_reason(
    client: Client, service: Noisett
) -> None:
    assert service.runner is not None
    pipe = (await service.runner.engine()).pipe
    pipe.scheduler = UniPCMultistepScheduler(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"
    )
    result = await client.call_tool(
        "generate_image", {"prompt": "a harbour", "steps": 2, "source_image": SOURCE_B64}
    )
    assert result.is_error and "cannot start part-way through its schedule" in result.content[0].text
    assert not (await client.call_tool("generate_image", {"prompt": "a harbour", "steps": 2})).is_error


async def test_a_worker_loads_the_source_from_the_store_and_renders_the_same_pixels(
    client: Client, service: Noisett
) -> None:
    """A job from the Azure queue carries no bytes: the runner loads them by sha256 (given bytes) or by
    the source image's id, and renders what the front's own runner renders."""
    arguments = {"prompt": "a harbour", "steps": 4, "seed": 5, "source_image": SOURCE_B64, "strength": 0.5}
    local = (await client.call_tool("generate_image", arguments)).structured_content["images"][0]
    made_here = (await service.load_image(local["id"])).data
    record = await service.store.load_record(local["id"])
    assert record is not None and service.runner is not None
    sha = hashlib.sha256(SOURCE).hexdigest()
    await service.store.save_source(sha, SOURCE)  # what AzureJobQueue.submit stores for a worker
    by_id = {"source_image_id": local["id"], "source_sha256": hashlib.sha256(made_here).hexdigest()}
    for source in ({"source_sha256": sha}, by_id):
        job_spec = GenerationSpec.model_validate(
            record.model_dump() | {"seeds": [5], "source_image_id": None} | source
        )
        job = Job(id=new_image_id(), spec=job_spec, image_ids=[new_image_id()], owner=record.owner)
        assert job.source is None
        await service.runner.execute(job)
        assert job.status == "done", job.error
        data = (await service.load_image(job.image_ids[0])).data
        if "source_image_id" not in source:  # the same source, seed and strength: the same pixels
            assert _pixels(data) == _pixels(made_here)


async def test_a_worker_whose_source_expired_fails_the_job_clearly(service: Noisett) -> None:
    assert service.runner is not None
    job_spec = spec(0.5, steps=2).model_copy(update={"source_sha256": "a" * 64})
    job = Job(id=new_image_id(), spec=job_spec, image_ids=[new_image_id()])
    await service.runner.execute(job)
    assert job.status == "failed" and "no longer stored" in (job.error or "")


def _pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB").tobytes()
