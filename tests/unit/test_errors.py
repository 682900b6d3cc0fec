"""One hierarchy: every error raised on purpose is a NoisettError with a message fit for a user."""

from __future__ import annotations

from pathlib import Path

from noisett_mcp import errors


def test_every_error_is_a_noisett_error_and_bad_input_is_a_value_error() -> None:
    made = [
        errors.InvalidImageId("x"),
        errors.ImageNotFound("0" * 32),
        errors.QueueFull(3, 12.4),
        errors.StorageUnavailable("away"),
        errors.GenerationCancelled(),
        errors.StyleRefused(Path("s.toml"), "bad"),
        errors.StyleUnavailable("later"),
        errors.UnsafeFile("it is a named pipe (FIFO), not a regular file"),
        errors.TokenRejected("no key id (kid) in the header"),
        errors.NoIdentity("the access token has no usable tenant id (tid)"),
    ]
    assert all(isinstance(e, errors.NoisettError) for e in made)
    assert isinstance(made[0], ValueError) and isinstance(made[1], errors.RequestError)
    assert "Retry in about 12 s" in str(made[2])


def test_the_hierarchy_in_the_docstring_names_every_error() -> None:
    drawn = errors.__doc__ or ""
    for name, value in vars(errors).items():
        if isinstance(value, type) and issubclass(value, errors.NoisettError):
            assert name in drawn, f"{name} is missing from the drawing in errors.py"
