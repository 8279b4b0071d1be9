"""Shared test set-up: one torch thread, offline hub, a cache folder per session."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    """Oversubscribed OpenMP threads slow steps 50-80x on 2 cores."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return
    torch.set_num_threads(1)


# --- data fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def repo_cache_dir():
    """The repository's `.cache/s2s2` (git-ignored): data built or fetched once, reused by later runs."""
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / ".cache" / "s2s2"


@pytest.fixture(scope="session")
def icbm152_dataset(repo_cache_dir):
    """The embedded default dataset, `prepare_dataset(data_config())`, cached in the repo's .cache/s2s2."""
    from s2s2.pipeline.config.data import data_config
    from s2s2.pipeline.data.prepare import prepare_dataset

    return prepare_dataset(data_config(cache_dir=repo_cache_dir))


@pytest.fixture(scope="session")
def toy_generator(tmp_path_factory):
    """A tiny fine-tuned generator (toy data, 16 px) shared by the generation tests."""
    from fixtures_toy import toy_dataset, toy_project_config
    from s2s2.stages.finetune import run_finetune

    cfg = toy_project_config(str(tmp_path_factory.mktemp("toy-generator")))
    return run_finetune(cfg, toy_dataset())
