"""Shared fixtures: a model repository whose velocity engine is the exact Gaussian oracle, and a
real embedded tritonserver serving it (127.0.0.1, free ports, stopped by PID)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# The suite runs two workers (pyproject: -n 2) on as many cores; a process's OpenMP pool of one
# thread per core would make the two spin against each other (measured: 9:18 → 7:57 for the suite).
# Set before torch is imported, and inherited by the workers, their servers and their subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

import grouplat
from grouplat.export.oracle import oracle_info, oracle_onnx
from grouplat.export.repository import ServingOptions, write_repository
from grouplat.serving.server import EmbeddedServer

ORACLE_SPACE = ((3, 16, 16), "dct", (30, 100, 200))  # the paper's groups, last boundary fitted to 16×16


def make_oracle(seed: int = 0) -> grouplat.GaussianOracle:
    space = grouplat.LatentSpace(*ORACLE_SPACE)
    rng = np.random.default_rng(seed)
    mean = 0.05 * rng.standard_normal(space.latent_shape)
    std = rng.uniform(0.3, 1.5, space.latent_shape)
    return grouplat.GaussianOracle(space, mean, std)


def oracle_images(oracle: grouplat.GaussianOracle, n: int, seed: int = 1) -> np.ndarray:
    """Oracle samples (clipped into [-1, 1], so still in the served image range)."""
    return np.clip(oracle.sample(n, seed), -1, 1).astype(np.float32)


def oracle_repository_at(path, options: ServingOptions | None = None, seed: int = 0):
    oracle = make_oracle(seed)
    info = oracle_info(oracle, grouplat.Schedule.from_cuts(grouplat.PAPER_TRAIN))
    write_repository(path, info, oracle_onnx(oracle).SerializeToString(), options or ServingOptions())
    return path


@pytest.fixture(scope="session")
def oracle():
    return make_oracle()


@pytest.fixture(scope="session")
def oracle_repository(tmp_path_factory):
    return oracle_repository_at(tmp_path_factory.mktemp("oracle_repository"))


@pytest.fixture(scope="session")
def oracle_server(oracle_repository):
    with EmbeddedServer(oracle_repository) as server:
        yield server


def make_certificates(folder: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (openssl), in `folder`."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=grouplat-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")  # fmt: skip
    (folder / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")  # fmt: skip
    return folder
