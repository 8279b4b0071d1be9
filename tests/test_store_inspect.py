"""`s2s2 stack inspect` on real stores: summary, JSON, preview PNG, and --verify finding bad shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from s2s2.store.inspect import format_summary, summarise, verify
from s2s2.store.manifest import GeneratorIdentity, StackGenerator, StackSource, SynthIdentity
from s2s2.store.stack_store import StackStore
from test_store_support import REPO_DIR, fake_stack, python_env, synthetic_dataset

K = 3


def make_store(path: Path, complete: bool = True) -> StackStore:
    store = StackStore.create(path, synthetic_dataset(n=24), k=K, shard_size=2)  # 8 samples, 4 shards
    for shard in store.pending_shards() if complete else [0]:
        store.write_shard(shard, fake_stack(store.shard_samples(shard), K, (1, 16, 16)))
    return store


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "s2s2.cli", "stack", "inspect", *args], capture_output=True,
                          text=True, env=python_env(), cwd=REPO_DIR, timeout=120)


def shard_file(path: Path, shard: int) -> Path:
    return path / "stack" / "c" / str(shard) / "0" / "0" / "0" / "0"


def test_json_summary_and_preview(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    preview = tmp_path / "preview.png"
    result = cli(str(path), "--json", "--preview", str(preview))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["n_samples"], summary["k"], summary["complete_fraction"]) == (8, K, 1.0)
    assert summary["image_shape"] == [1, 16, 16] and summary["dtype"] == "uint8"
    assert summary["fingerprint"] == synthetic_dataset(n=24).fingerprint()
    disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert summary["bytes_on_disk"] == disk
    assert abs(sum(summary["class_pixel_share"]) - 1.0) < 1e-9
    fidelity = summary["mask_fidelity"]  # fake stacks are noise: at chance level
    assert fidelity["n_images"] == 8 * K and abs(fidelity["dice_own"] - fidelity["dice_chance"]) < 0.2
    with Image.open(preview) as image:
        assert image.width > (2 + K) * 16 * 2 and image.height > 4 * 16 * 2


def test_text_summary_names_layout_and_completion(tmp_path):
    store = make_store(tmp_path / "s.zarr", complete=False)
    text = format_summary(summarise(store))
    assert "N=8, K=3, image 1x16x16, uint8, zstd" in text
    assert "4 shards of 2 samples" in text and "25.0% (3 shards pending)" in text
    assert "generator   none bound yet" in text and "grey matter" in text


def test_verify_names_truncated_and_corrupted_shards(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    assert cli(str(path), "--verify").returncode == 0
    truncated = shard_file(path, 1)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    corrupted = shard_file(path, 3)
    data = bytearray(corrupted.read_bytes())
    data[40:48] = bytes(8)
    corrupted.write_bytes(bytes(data))
    result = cli(str(path), "--verify")
    assert result.returncode == 2
    assert "verification failed in shard(s) 1, 3" in result.stderr
    assert "ERROR shard 1: stack cannot be decoded" in result.stdout
    assert "ERROR shard 3: stack cannot be decoded" in result.stdout
    assert result.stdout.count("ERROR") == 2


def test_verify_finds_ledger_disagreeing_with_data_and_constant_images(tmp_path):
    path = tmp_path / "s.zarr"
    store = make_store(path, complete=False)
    group = zarr.open_group(str(path), mode="r+")
    group["done"][2:4] = True  # shard 1 claimed done, never written
    flat = fake_stack(store.shard_samples(2), K, (1, 16, 16))
    flat[1, 2] = 77
    store.write_shard(2, flat)
    messages = [p.message for p in verify(StackStore.open(path)) if p.fatal]
    assert sum("shard 1:" in m and "all zero" in m for m in messages) == 2 * K
    assert messages[-1] == "shard 2: sample 5 image k=2 is constant (77.0)"
    assert len(messages) == 2 * K + 1


def test_stale_temporary_files_are_reported_as_harmless(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    (shard_file(path, 0).parent / "0.deadbeef.partial").write_bytes(b"half a shard")
    problems = verify(StackStore.open(path))
    assert len(problems) == 1 and not problems[0].fatal and "partial" in problems[0].message
    assert np.isclose(summarise(StackStore.open(path), with_fidelity=False)["complete_fraction"], 1.0)


def test_verify_finds_nan_images_in_a_float16_store(tmp_path):
    store = StackStore.create(tmp_path / "f.zarr", synthetic_dataset(n=12), k=2, shard_size=2, dtype="float16")
    images = np.random.default_rng(0).random((2, 2, 1, 16, 16), dtype=np.float32)
    images[0, 1, 0, 3, 3] = np.nan
    store.write_shard(0, images)
    problems = [p for p in verify(StackStore.open(tmp_path / "f.zarr")) if p.fatal]
    assert [p.message for p in problems] == ["shard 0: sample 0 image k=1 has NaN pixels"]


def _two_sources() -> StackGenerator:
    controlnet = GeneratorIdentity(base_model="tiny", controlnet_hash="ab" * 32, scheduler="unipc", steps=2,
                                   guidance_scale=1.0, eta=0.0, prompt_template="{classes}", seed=0, resolution=16)
    synth = SynthIdentity(params={"mean": [0, 1], "std": [0, 0.05], "separation": 0.5}, seed=0, monai_version="1.6.0")
    return StackGenerator(sources=(StackSource(k_start=0, k_stop=1, identity=controlnet),
                                   StackSource(k_start=1, k_stop=2, identity=synth)))


def test_fidelity_is_read_against_the_originals_and_per_source(tmp_path):
    """k=0 copies the originals (the ceiling itself), k=1 inverts their contrast (T1 -> T2-like)."""
    store = StackStore.create(tmp_path / "s.zarr", synthetic_dataset(n=36), k=2, shard_size=4)  # 12 samples
    store.bind_generator(_two_sources())
    for shard in store.pending_shards():
        rows = store.shard_samples(shard)
        originals = store.read_originals(list(rows))
        store.write_shard(shard, np.stack([originals, 255 - originals], axis=1))
    summary = summarise(StackStore.open(tmp_path / "s.zarr"))
    whole, (copied, inverted) = summary["mask_fidelity"], summary["by_source"]
    assert whole["ceiling"]["dice_own_adaptive"] > whole["ceiling"]["dice_chance_adaptive"] + 0.3
    assert (copied["kind"], inverted["kind"]) == ("controlnet", "synth")
    assert copied["mask_fidelity"]["normalised"] == {"global": pytest.approx(1.0), "adaptive": pytest.approx(1.0)}
    assert copied["appearance"]["order_changed_fraction"] == 0.0
    assert inverted["mask_fidelity"]["normalised"]["adaptive"] > 0.9  # adaptive means follow the inversion
    assert inverted["mask_fidelity"]["normalised"]["global"] < 0.3  # T1's class means do not
    assert inverted["appearance"]["order_changed_fraction"] == 1.0
    assert summary["appearance"]["order_changed_fraction"] == pytest.approx(0.5)
    assert summary["appearance"]["class_mean_spread_across_k"] > 0.1
    assert json.loads(json.dumps(summary))["by_source"][1]["k_start"] == 1  # JSON-ready
    text = format_summary(summary)
    assert "  generator   k 0 controlnet: tiny + ControlNet abababababab" in text and "k 1 synth: labels-to-image" in text
    assert "ceiling     the originals score" in text and "source      k 1 synth:" in text
    assert "tissue brightness order differs from the original's in 100%" in text
