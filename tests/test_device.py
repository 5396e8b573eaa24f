"""``--device``: CPU keeps today's vectors and cache file; CUDA is validated once; fp16 has its own cache key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kern_finetune.cli import main
from kern_finetune.config import RunConfig
from kern_finetune.vectors.encode import Encoder, default_model_path, load_sentence_transformer, model_identity
from kern_finetune.errors import ConfigError

TEXTS = ["Stocks fall on oil worries.", "Team wins the cup after a long season of injuries.", "New chip doubles speed."]
HAS_CUDA = torch.cuda.is_available()


def test_cpu_gives_todays_vectors_and_cache_file(tmp_path: Path) -> None:
    enc = Encoder(cache_dir=tmp_path, device="cpu")
    got = enc.encode(TEXTS, progress=False)
    # today's path: the fp32 model on the CPU, normalised, as the encoder always computed it
    want = load_sentence_transformer(default_model_path(), device="cpu").encode(
        TEXTS, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert np.allclose(got, want, atol=1e-6)
    assert enc.precision_ == "fp32" and enc.identity == model_identity(default_model_path())
    assert [p.name for p in tmp_path.glob("vectors-*.sqlite")] == [f"vectors-{model_identity(default_model_path())}.sqlite"]
    # the default encoder on a CPU-only machine is the same encoder, reading the same cache
    if not HAS_CUDA:
        again = Encoder(cache_dir=tmp_path)
        assert np.array_equal(again.encode(TEXTS, progress=False), got) and again.n_encoded_ == 0


def test_fp16_has_its_own_cache_key(tmp_path: Path) -> None:
    fp32 = Encoder(cache_dir=tmp_path, device="cpu")
    on_cuda = Encoder(cache_dir=tmp_path, device="cuda")  # resolves without touching a GPU
    assert on_cuda.precision_ == "fp16"
    assert on_cuda.identity == fp32.identity + "-fp16" != fp32.identity
    assert Encoder(cache_dir=tmp_path, device="cpu", precision="fp16").identity == on_cuda.identity
    assert Encoder(cache_dir=tmp_path, device="cuda", precision="fp32").identity == fp32.identity
    with pytest.raises(ConfigError, match="unknown precision"):
        _ = Encoder(cache_dir=tmp_path, precision="int8").identity


def test_cuda_is_validated_once_at_the_boundary() -> None:
    if HAS_CUDA:
        assert RunConfig(device="cuda").validate().resolved_device() == "cuda"
    else:
        with pytest.raises(ConfigError) as err:
            RunConfig(device="cuda").validate()
        assert "\n" not in str(err.value) and "--device" in str(err.value)
    assert RunConfig(device="cpu").validate().resolved_device() == "cpu"
    assert RunConfig().validate().resolved_device() == ("cuda" if HAS_CUDA else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        RunConfig(device="tpu").validate()


def test_cli_cuda_without_cuda_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "x.json"
    export.write_text("[]")
    code = main(["run", "--export", str(export), "--device", "cuda", "--cache-dir", str(tmp_path / "c"),
                 "--out", str(tmp_path / "out")])
    if HAS_CUDA:
        assert code != 0  # the empty export fails later, not the device
    else:
        err = capsys.readouterr().err.strip()
        assert code != 0 and err.count("\n") == 0 and "--device cuda" in err, err
