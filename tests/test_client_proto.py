"""Wire formats: the checked-in protobuf code is current, and latent codes round-trip exactly."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import grouplat
from grouplat.client import Latents, Settings
from grouplat.proto import FORMAT_VERSION, latent_pb2
from grouplat.proto.generate import HERE, PROTOS

FINGERPRINT = "ab" * 32
SETTINGS = Settings("heun", 20, "0.1,0.2,0.3")


def latents(n: int = 3, space: grouplat.LatentSpace | None = None, dtype: str = "float32") -> Latents:
    space = space or grouplat.LatentSpace((3, 16, 16), "dct", (30, 100, 200))
    values = np.random.default_rng(0).standard_normal((n, *space.latent_shape)).astype(np.float32)
    return Latents(values, FINGERPRINT, space, SETTINGS, dtype)


@pytest.mark.skipif(
    importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (the dev extra) is not installed"
)
def test_generated_code_is_current(tmp_path: Path) -> None:
    from grouplat.proto.generate import generate

    for made in generate(tmp_path):
        checked_in = HERE / made.name
        assert checked_in.read_text() == made.read_text(), (
            f"{checked_in} is stale: run python -m grouplat.proto.generate"
        )
    assert PROTOS == ["latent.proto"]


def test_generated_code_has_no_runtime_version_check() -> None:
    # protoc ≥ 26 writes a check that refuses protobuf runtimes older than itself (the client extra
    # allows protobuf 4.21+, and tritonclient 2.51 pins protobuf < 5).
    assert "_runtime_version" not in (HERE / "latent_pb2.py").read_text()


def test_code_fields_and_bytes_file_bytes(tmp_path: Path) -> None:
    z = latents()
    code = z.to_proto()
    assert code.format_version == FORMAT_VERSION == 1
    assert code.fingerprint == FINGERPRINT
    assert list(code.image_shape) == [3, 16, 16] and code.basis == "dct"
    assert list(code.group_boundaries) == [30, 100, 200] and not code.group_of
    assert (code.settings.solver, code.settings.steps, code.settings.schedule) == ("heun", 20, "0.1,0.2,0.3")
    assert code.dtype == latent_pb2.DTYPE_FLOAT32 and code.count == 3
    assert code.coefficients == z.values.astype("<f4").tobytes()  # little-endian, row-major

    data = z.to_bytes()
    (tmp_path / "z.latent").write_bytes(data)
    back = Latents.load(tmp_path / "z.latent")
    assert back.to_bytes() == data  # bytes → file → bytes, exactly
    np.testing.assert_array_equal(back.values, z.values)
    assert back.fingerprint == z.fingerprint and back.space == z.space and back.settings == z.settings
    z.save(tmp_path / "again.latent")
    assert (tmp_path / "again.latent").read_bytes() == data


def test_float16_storage_and_index_set_groups() -> None:
    z = latents(dtype="float16")
    back = Latents.from_bytes(z.to_bytes())
    assert back.dtype == "float16" and back.values.dtype == np.float32
    np.testing.assert_array_equal(back.values, z.values.astype(np.float16).astype(np.float32))
    assert len(z.to_bytes()) < len(latents().to_bytes()) * 0.6
    assert Latents.from_bytes(back.to_bytes()).to_bytes() == back.to_bytes()

    quadrants = grouplat.LatentSpace((1, 8, 8), "pixel", grouplat.quadrant_groups(8, 8))
    z = latents(2, quadrants)
    code = z.to_proto()
    assert not code.group_boundaries and len(code.group_of) == 64
    back = Latents.from_bytes(z.to_bytes())
    assert back.space == quadrants and back.to_bytes() == z.to_bytes()


def test_slicing_and_concat_keep_the_model() -> None:
    z = latents(4)
    assert len(z[1]) == 1 and len(z[-1]) == 1 and len(z[1:3]) == 2
    np.testing.assert_array_equal(z[-1].values[0], z.values[3])
    joined = Latents.concat([z[0], z[1:]])
    assert joined.to_bytes() == z.to_bytes()
    with pytest.raises(ValueError, match="read-only"):
        z.values[0, 0, 0] = 1.0
    other = Latents(z.values, "cd" * 32, z.space, SETTINGS)
    with pytest.raises(ValueError, match="different models"):
        Latents.concat([z, other])


def test_bad_codes_are_refused_clearly() -> None:
    good = latents().to_proto()

    def variant(**changes: object) -> bytes:
        code = latent_pb2.LatentCode()
        code.CopyFrom(good)
        for name, value in changes.items():
            if isinstance(value, list):
                field = getattr(code, name)
                del field[:]
                field.extend(value)
            else:
                setattr(code, name, value)
        return code.SerializeToString()

    with pytest.raises(ValueError, match="format version 2"):
        Latents.from_bytes(variant(format_version=2))
    with pytest.raises(ValueError, match="format version 0"):
        Latents.from_bytes(variant(format_version=0))
    with pytest.raises(ValueError, match="bytes of coefficients"):
        Latents.from_bytes(variant(count=4))
    with pytest.raises(ValueError, match="unknown dtype"):
        Latents.from_bytes(variant(dtype=7))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        Latents.from_bytes(variant(image_shape=[16, 16]))
    with pytest.raises(ValueError, match="boundaries"):
        Latents.from_bytes(variant(group_boundaries=[100, 30]))
    with pytest.raises(ValueError, match="not a grouplat latent code"):
        Latents.from_bytes(b"\xff\xff\xff")
    with pytest.raises(ValueError, match="expected latents"):
        Latents(np.zeros((1, 3, 10), np.float32), FINGERPRINT, latents().space, SETTINGS)
    with pytest.raises(ValueError, match="dtype"):
        Latents(np.zeros((1, 3, 256), np.float32), FINGERPRINT, latents().space, SETTINGS, "int8")


def test_settings_validation() -> None:
    assert SETTINGS.check(4) == SETTINGS
    assert Settings("euler", 8, "0.10, 0.2,0.3").check(4).schedule == "0.1,0.2,0.3"
    with pytest.raises(ValueError, match="unknown solver 'rk4'"):
        Settings("rk4", 20, "0.1,0.2,0.3").check(4)
    with pytest.raises(ValueError, match="steps must be an integer in 4..4096"):
        Settings("heun", 2, "0.1,0.2,0.3").check(4)
    with pytest.raises(ValueError, match="3 cut points"):
        Settings("heun", 20, "0.1,0.2").check(4)
    with pytest.raises(ValueError, match="increase strictly"):
        Settings("heun", 20, "0.3,0.2,0.1").check(4)


def crafted(image_shape: list[int], count: int = 1, coefficients: bytes = b"", **fields: object) -> bytes:
    """A hostile latent code: a header that claims a layout, and only the bytes given."""
    code = latent_pb2.LatentCode(format_version=FORMAT_VERSION, fingerprint="x", image_shape=image_shape,
                                 basis="dct", dtype=latent_pb2.DTYPE_FLOAT32, count=count,
                                 coefficients=coefficients)  # fmt: skip
    for name, value in fields.items():
        getattr(code, name).extend(value) if isinstance(value, list) else setattr(code, name, value)
    return code.SerializeToString()


def parse_under_budget(data: bytes, seconds: float = 1.0, peak_bytes: int = 16 * 2**20) -> str:
    """Parse `data`; it must be refused (ValueError) in under `seconds`, allocating under `peak_bytes`."""
    import time
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError) as refused:
            Latents.from_bytes(data)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"refused after {elapsed:.2f} s"
    assert peak < peak_bytes, f"peak allocation {peak / 2**20:.0f} MiB while refusing"
    return str(refused.value)


def test_a_tiny_code_claiming_a_huge_image_fails_fast_without_allocating() -> None:
    # Issue 13: 21 bytes claiming 16384×16384 built 4.2 GB of DCT matrices before the byte count check.
    data = crafted([1, 16384, 16384])
    assert len(data) < 32
    assert "out of bounds" in parse_under_budget(data)
    # In bounds but without its coefficients: the byte count is checked before the space is built.
    assert "bytes of coefficients" in parse_under_budget(crafted([1, 8192, 8192]))
    assert "bytes of coefficients" in parse_under_budget(crafted([3, 4096, 4096], count=2**32 - 1))
    assert "no latents" in parse_under_budget(crafted([1, 8192, 8192], count=0))
    assert "more than" in parse_under_budget(crafted([64, 8192, 8192]))
    assert "out of bounds" in parse_under_budget(crafted([65, 8, 8]))
    assert "out of bounds" in parse_under_budget(crafted([0, 8, 8]))
    assert "unknown basis" in parse_under_budget(crafted([1, 8192, 8192], basis="fft"))
    # Group layouts are checked against the code's own bytes, before any loop over what they claim.
    four = b"\0" * (4 * 64)
    huge = [2**32 - 1] * 64  # 2³² groups claimed: the old code looped over every one
    assert "group numbers" in parse_under_budget(crafted([1, 8, 8], coefficients=four, group_of=huge))
    assert "group numbers" in parse_under_budget(crafted([1, 8, 8], coefficients=four, group_of=[64] * 64))
    assert "is empty" in parse_under_budget(crafted([1, 8, 8], coefficients=four, group_of=[0] * 63 + [2]))
    assert "boundaries" in parse_under_budget(crafted([1, 8, 8], coefficients=four, group_boundaries=[70]))
    # The same checks pass good codes, index-set groups included.
    quadrants = grouplat.LatentSpace((1, 8, 8), "pixel", grouplat.quadrant_groups(8, 8))
    z = latents(2, quadrants)
    assert Latents.from_bytes(z.to_bytes()).space == quadrants


def test_load_refuses_a_file_too_large_before_reading_it(tmp_path: Path) -> None:
    from grouplat.client.latents import MAX_FILE_BYTES, read_code

    data = latents(1).to_bytes()
    path = tmp_path / "big.latent"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=f"{len(data)} bytes: more than a latent file may hold"):
        Latents.load(path, max_bytes=len(data) - 1)
    assert Latents.load(path, max_bytes=len(data)).to_bytes() == data
    sparse = tmp_path / "sparse.latent"  # 8 GiB on paper, nothing on disk
    with open(sparse, "wb") as f:
        f.truncate(8 * 2**30)
    assert MAX_FILE_BYTES < 8 * 2**30
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more than a latent file may hold"):
            Latents.load(sparse)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    with pytest.raises(ValueError, match="more than a latent file may hold"):
        read_code("/dev/zero", max_bytes=1000)  # no size to check: read up to the limit, then refused


def test_model_version_is_an_optional_field_older_readers_skip() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    z = latents()
    versioned = Latents(z.values, FINGERPRINT, z.space, SETTINGS, model_version="2")
    assert Latents.from_bytes(versioned.to_bytes()).model_version == "2"
    assert z.to_proto().model_version == "" and versioned.to_bytes() != z.to_bytes()
    # A reader built from latent.proto before the field (format_version 1 too) reads the code.
    older = descriptor_pb2.FileDescriptorProto()
    latent_pb2.DESCRIPTOR.CopyToProto(older)
    (message,) = [m for m in older.message_type if m.name == "LatentCode"]
    fields = [f for f in message.field if f.name != "model_version"]
    del message.field[:]
    message.field.extend(fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(older)
    descriptor = pool.FindMessageTypeByName("grouplat.v1.LatentCode")
    get_class = getattr(message_factory, "GetMessageClass", None)
    old_class = (
        get_class(descriptor) if get_class else message_factory.MessageFactory(pool).GetPrototype(descriptor)
    )
    old = old_class.FromString(versioned.to_bytes())
    assert (
        old.format_version == 1
        and old.fingerprint == FINGERPRINT
        and old.coefficients == z.to_proto().coefficients
    )
    # …and keeps it as an unknown field when it writes the code again.
    assert Latents.from_bytes(old.SerializeToString()).model_version == "2"
