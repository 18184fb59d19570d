"""The client's generation settings, offline: a settings object and keyword overrides resolve
through one helper (grouplat.client.served.Wanted) with one precedence."""

from __future__ import annotations

import numpy as np
import pytest

import grouplat
from grouplat.client import Client, Latents, ServedModel, Settings
from grouplat.client.served import Wanted

SPACE = grouplat.LatentSpace((3, 16, 16), "dct", (30, 100, 200))
MODEL = ServedModel("ab" * 32, SPACE, Settings("heun", 20).check(4), "0.1,0.2,0.3", True)
OWN = Settings("euler", 30, "0.2,0.4,0.6")  # a latent's own settings


def test_precedence_keywords_over_object_over_latents_over_model() -> None:
    assert Wanted().resolve(MODEL) == MODEL.settings
    assert Wanted().resolve(MODEL, OWN) == OWN
    assert Wanted(Settings("gei2m", 12)).resolve(MODEL, OWN) == Settings("gei2m", 12, OWN.schedule)
    assert Wanted(Settings("gei2m", 12), steps=8).resolve(MODEL, OWN) == Settings("gei2m", 8, OWN.schedule)
    assert Wanted(steps=8).resolve(MODEL, OWN) == Settings("euler", 8, OWN.schedule)
    assert Wanted(schedule="0.3,0.5,0.7").resolve(MODEL) == Settings("heun", 20, "0.3,0.5,0.7")


def test_the_object_and_the_keywords_resolve_alike() -> None:
    for base in (None, OWN):
        by_object = Wanted.of(Settings("gei2m", 12), {}).resolve(MODEL, base)
        by_keywords = Wanted.of(None, {"solver": "gei2m", "steps": 12}).resolve(MODEL, base)
        assert by_object == by_keywords
    assert Wanted.of(None, {"steps": None, "solver": None, "schedule": None}) == Wanted()  # None: not given


def test_bad_settings_fail_before_anything_is_sent() -> None:
    z = Latents(np.zeros((1, 3, 256)), MODEL.fingerprint, SPACE, OWN)
    client = Client("127.0.0.1:1")  # never contacted
    with pytest.raises(TypeError, match="unexpected keyword argument.*step"):
        client.decode(z, step=30)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="GenerationSettings"):
        client.decode(z, settings={"steps": 30})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown solver"):
        Wanted(solver="rk4").resolve(MODEL)


def test_schedules_fall_through_as_a_pair() -> None:
    """A model serves an encode and a decode schedule; whoever gives a schedule gives both."""
    served = Settings("gei3ab", 36, "0.2,0.4,0.6", encode_schedule="0.1,0.2,0.3").check(4)
    model = ServedModel("ab" * 32, SPACE, served, "0.1,0.2,0.3", True)
    assert Wanted().resolve(model) == served
    assert Wanted().resolve(model).encoding().schedule == "0.1,0.2,0.3"
    assert Wanted(steps=12).resolve(model).encode_schedule == "0.1,0.2,0.3"
    # a latent encoded at the served pair is decoded by the pair's decode schedule
    made = Wanted().resolve(model)
    assert Wanted().resolve(model, made).schedule == "0.2,0.4,0.6"
    # a schedule given (keyword, object or a latent's own single one) serves both directions
    one = "0.3,0.5,0.7"
    for wanted, base in ((Wanted(schedule=one), None), (Wanted(Settings(schedule=one)), None),
                         (Wanted(), Settings("euler", 30, one))):  # fmt: skip
        resolved = wanted.resolve(model, base)
        assert (resolved.schedule, resolved.encode_schedule) == ("0.3,0.5,0.7", None)
        assert resolved.encoding().schedule == "0.3,0.5,0.7"


def test_latent_files_keep_the_encode_schedule() -> None:
    pair = Settings("gei3ab", 36, "0.2,0.4,0.6", encode_schedule="0.1,0.2,0.3").check(4)
    for settings in (pair, OWN.check(4)):
        z = Latents(np.zeros((1, 3, 256), np.float32), MODEL.fingerprint, SPACE, settings)
        assert Latents.from_bytes(z.to_bytes()).settings == settings


def test_steps_fall_through_as_a_pair_and_latent_files_keep_them() -> None:
    """A model serves an encode's and a decode's steps; whoever gives `steps` gives both, and
    the request of each direction sends its own."""
    from grouplat.client.plans import request_parameters

    served = Settings("gei2pc", 24, encode_steps=36).check(4)
    model = ServedModel("ab" * 32, SPACE, served, "0.1,0.2,0.3", True)
    assert (Wanted().resolve(model).steps, Wanted().resolve(model).encoding().steps) == (24, 36)
    for wanted, base in ((Wanted(steps=12), None), (Wanted(Settings(steps=12)), None),
                         (Wanted(), Settings("gei2pc", 12))):  # fmt: skip
        resolved = wanted.resolve(model, base)
        assert (resolved.steps, resolved.encode_steps, resolved.encoding().steps) == (12, None, 12)
    both = Wanted(Settings(steps=10, encode_steps=14)).resolve(model)
    assert request_parameters("encode", both)["steps"] == 14 and "encode_steps" not in request_parameters(
        "encode", both
    )
    assert request_parameters("decode", both)["steps"] == 10 and "encode_steps" not in request_parameters(
        "decode", both
    )
    assert (request_parameters("mix", both)["steps"], request_parameters("mix", both)["encode_steps"]) == (
        10,
        14,
    )
    z = Latents(np.zeros((1, 3, 256), np.float32), MODEL.fingerprint, SPACE, served)
    assert Latents.from_bytes(z.to_bytes()).settings == served
    with pytest.raises(ValueError, match="encode steps must be an integer in 4..4096, got 2"):
        Settings(encode_steps=2).check(4)
