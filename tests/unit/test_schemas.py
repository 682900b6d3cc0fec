"""Wire schemas: rendered sizes, request limits, ids."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from noisett_mcp.schemas import ASPECT_RATIOS, GenerationRequest, is_image_id, new_image_id, rendered_size


@pytest.mark.parametrize("ratio", list(ASPECT_RATIOS))
def test_every_aspect_ratio_renders_about_a_megapixel_on_the_grid(ratio: str) -> None:
    width, height = rendered_size(ratio)
    assert width % 16 == 0 and height % 16 == 0
    assert 0.9 * 1024**2 <= width * height <= 1024**2
    w, h = ASPECT_RATIOS[ratio]
    assert abs(width / height - w / h) < 0.05


def test_the_demo_geometry_renders_small_images() -> None:
    assert rendered_size("1:1", 64, 2) == (64, 64)
    assert rendered_size("16:9", 64, 2) == (84, 48)


def test_a_request_refuses_out_of_range_values_with_the_limit() -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        GenerationRequest(prompt="x", steps=0)
    with pytest.raises(ValidationError, match="less than or equal to 4"):
        GenerationRequest(prompt="x", count=5)
    with pytest.raises(ValidationError, match="at least 1 character"):
        GenerationRequest(prompt="")
    assert GenerationRequest(prompt="x").style == "none"


def test_image_ids_are_32_lowercase_hex() -> None:
    assert is_image_id(new_image_id())
    for bad in ("A" * 32, "0" * 31, "../" + "0" * 29, None, 7):
        assert not is_image_id(bad)


def test_an_image_to_image_strength_runs_that_share_of_the_steps_never_none_or_all_in_between() -> None:
    from noisett_mcp.schemas import denoise_steps

    assert [denoise_steps(10, s) for s in (0.0, 0.01, 0.3, 0.6, 0.9, 0.99, 1.0)] == [0, 1, 3, 6, 9, 9, 10]
    assert denoise_steps(16, 0.6) == 10 and denoise_steps(2, 0.6) == 1 and denoise_steps(1, 0.5) == 1
    assert denoise_steps(28, None) == 28  # text-to-image
