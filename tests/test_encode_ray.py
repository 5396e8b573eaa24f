"""The Ray encode path (the ``ray`` extra, installed by the README's set-up) on a local Ray runtime.

Ray is imported plainly, not skipped: CI installs the extra, and a check that silently does nothing is a
defect.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from kern_finetune.cli import build_parser
from kern_finetune.commands.run import config_from_args
from kern_finetune.config import RunConfig
from kern_finetune.vectors.encode import Encoder
from kern_finetune.vectors.encode_ray import RayEncoder


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def texts(subset_sel) -> list[str]:
    """About 200 distinct texts of the bundled sample."""
    return list(dict.fromkeys(subset_sel.texts))[:200]


@pytest.mark.timeout(600)
def test_ray_vectors_equal_the_plain_encoders_and_land_in_the_cache(local_ray, texts, tmp_path: Path) -> None:
    plain = Encoder(cache_dir=tmp_path / "plain", device="cpu").encode(texts, progress=False)

    cache = tmp_path / "shared"
    Encoder(cache_dir=cache, device="cpu").encode(texts[:40], progress=False)  # a previous local run
    enc = RayEncoder(cache_dir=cache, device="cpu", address="local", block_size=64)
    got = enc.encode(texts, progress=False)
    assert enc.n_cached_ == 40 and enc.n_encoded_ == len(texts) - 40  # only the missing texts went to Ray
    assert enc.replicas_ == 2 and enc.identity == Encoder(cache_dir=cache, device="cpu").identity
    cosine = np.sum(got * plain, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(plain, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    assert ray.is_initialized()  # a runtime the encoder did not start is left running

    later = Encoder(cache_dir=cache, device="cpu")  # a later plain run reads Ray's vectors from the cache
    again = later.encode(texts, progress=False)
    assert later.n_encoded_ == 0 and later.n_cached_ == len(texts)
    assert np.array_equal(again, got)


def test_ray_address_option_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def config(*extra: str) -> RunConfig:
        args = build_parser().parse_args(["run", "--export", str(tmp_path / "x.json"), "--device", "cpu", *extra])
        return config_from_args(args)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert config().ray_address is None
    assert config("--ray-address", "local").ray_address == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert config().ray_address == "10.0.0.5:6379"
    assert config("--ray-address", "local").ray_address == "local"  # the option wins
    assert RunConfig(ray_address="local").validate().ray_address == "local"
