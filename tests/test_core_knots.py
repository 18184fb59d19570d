"""Calibrated knots (grouplat.knots): the table's checks, the file beside a checkpoint, and the
model info that carries them to every encode and decode of matching settings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import grouplat
from grouplat import knots
from grouplat.modelinfo import ModelInfo

SPACE = grouplat.LatentSpace((1, 8, 8), "dct", (4, 16))
SCHEDULE = grouplat.Schedule.from_cuts("0.5,0.8")
TABLE = {
    "decode/gei2pc/tau/3-2-1": [[0.2, 0.5], [0.3], []],
    "encode/gei2pc/tau/3-2-1": [[0.6, 0.9], [0.5], []],
}


def info(table: dict) -> ModelInfo:
    stats = np.zeros((1, 64), np.float32), np.ones((1, 64), np.float32)
    return ModelInfo("a" * 64, SPACE, SCHEDULE, True, *stats, table)


@pytest.mark.parametrize(
    "table, message",
    [
        ([], "a knots table is a JSON object"),
        ({"decode/gei2pc/3-2-1": [[0.5], [], []]}, "is not direction/solver/spacing/steps-per-group"),
        ({"sideways/gei2pc/tau/3-2-1": [[0.2, 0.5], [0.3], []]}, "unknown direction, solver or spacing"),
        ({"decode/rk4/tau/3-2-1": [[0.2, 0.5], [0.3], []]}, "unknown direction, solver or spacing"),
        ({"decode/gei2pc/tau/3-2-1": [[0.2, 0.5], [0.3]]}, "one list per group (3) expected"),
        ({"decode/gei2pc/tau/3-2-1": [[0.2, 0.5], [0.3, 0.4], []]}, "a phase of 2 steps needs 1 increasing"),
        ({"decode/gei2pc/tau/3-2-1": [[0.5, 0.2], [0.3], []]}, "a phase of 3 steps needs 2 increasing"),
        ({"decode/gei2pc/tau/3-2-1": [[0.0, 0.5], [0.3], []]}, "inside (0, 1)"),
    ],
)
def test_a_bad_table_is_refused_by_name(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=".*".join(map(__import__("re").escape, message.split("*")))):
        knots.check(table)
    with pytest.raises(ValueError):
        info(table)  # type: ignore[arg-type]


def test_the_model_info_serves_knots_to_matching_settings_alone() -> None:
    model = info(TABLE)
    explicit = model.solve_args(SCHEDULE, [3, 2, 1], "gei2pc")  # type: ignore[arg-type]  # steps per group
    assert explicit["knots"] == TABLE["decode/gei2pc/tau/3-2-1"]
    split = grouplat.allocate_steps(SCHEDULE, 6).tolist()
    table = {  # each phase's knots crowded towards its data end (encode) or its noise end (decode)
        knots.key(d, "gei2pc", "tau", split): [(np.linspace(0, 1, n + 1)[1:-1] ** p).tolist() for n in split]
        for d, p in (("encode", 2.0), ("decode", 0.5))
    }
    model = info(table)
    decode, encode = (
        model.solve_args(SCHEDULE, 6, "gei2pc", "tau", d)["knots"] for d in ("decode", "encode")
    )
    assert decode == table[knots.key("decode", "gei2pc", "tau", split)] != encode
    assert encode == table[knots.key("encode", "gei2pc", "tau", split)]
    for other in ((7, "gei2pc", "tau"), (6, "heun", "tau"), (6, "gei2pc", "uniform"), (2, "gei2pc", "tau")):
        assert model.solve_args(SCHEDULE, *other)["knots"] is None  # also for steps allocate_steps refuses
    assert info({}).solve_args(SCHEDULE, 6, "gei2pc")["knots"] is None
    # the knots move the grid: a decode with them differs from the even spacing's
    oracle = grouplat.GaussianOracle(SPACE, 0.0, np.linspace(0.2, 2, 64).reshape(1, 64))
    z = np.random.default_rng(0).standard_normal((2, 1, 64)).astype(np.float32)
    args = info(
        {knots.key("decode", "heun", "tau", split): table[knots.key("decode", "gei2pc", "tau", split)]}
    ).solve_args(SCHEDULE, 6, "heun")
    assert (
        np.abs(
            grouplat.decode(oracle, z, **args) - grouplat.decode(oracle, z, **args | {"knots": None})
        ).max()
        > 1e-3
    )


def test_knots_survive_save_and_load_and_older_model_infos_have_none(tmp_path) -> None:
    info(TABLE).save(tmp_path)
    assert ModelInfo.load(tmp_path).knots == TABLE
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["knots"]
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert ModelInfo.load(tmp_path).knots == {}
    (tmp_path / "model.json").write_text(json.dumps(meta | {"knots": {"decode/gei2pc/tau/2": [[0.5]]}}))
    with pytest.raises(ValueError, match="cannot read the model info.*1 groups, the model has 3"):
        ModelInfo.load(tmp_path)


def test_the_knots_file_belongs_to_one_fingerprint(tmp_path) -> None:
    assert knots.read(tmp_path, "a" * 64) == {}  # no file: even spacing everywhere
    path = knots.write(tmp_path, "a" * 64, TABLE, {"command": "test"})
    assert knots.read(tmp_path, "a" * 64) == TABLE
    with pytest.raises(
        ValueError, match="knots.json.*fitted to the model aaaaaaaaaaaaaaaa…, not to this one"
    ):
        knots.read(tmp_path, "b" * 64)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="knots.json"):
        knots.read(tmp_path, "a" * 64)
    with pytest.raises(ValueError, match="a phase of 3 steps"):
        knots.write(tmp_path, "a" * 64, {"decode/gei2pc/tau/3-2-1": [[0.5], [0.3], []]}, {})
