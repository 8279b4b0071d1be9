"""What `s2s2 stack init` and `s2s2 stack inspect` do, kept out of the CLI module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from s2s2.pipeline.config.project import ProjectConfig
from s2s2.pipeline.errors import StoreError
from s2s2.store.stack_store import StackStore


def run_init(cfg: ProjectConfig, out: str | None, overwrite: bool) -> StackStore:
    """Prepare the dataset of `cfg.data` and create the store for `cfg.store.split` at `out`
    (default `cfg.store.path`) with the originals and masks written and the stack empty."""
    from s2s2.pipeline.data.prepare import prepare_dataset

    dataset = prepare_dataset(cfg.data)
    s = cfg.store
    return StackStore.create(out or s.path, dataset, k=s.k, split=s.split, shard_size=s.shard_size,
                             dtype=s.dtype, overwrite=overwrite, compression=s.compression,
                             compression_level=s.compression_level, storage_options=s.storage_options)


def run_inspect(path: str, as_json: bool, preview: Path | None, verify_chunks: bool,
                storage_options: dict[str, Any] | None, echo: Callable[[str], None]) -> None:
    """Print the summary (text or JSON), optionally write a preview PNG and verify every chunk.

    Raises StoreError naming every bad shard file and the repair when `verify_chunks` finds a fatal
    problem (the summary is left out when the damage prevents it).
    """
    from s2s2.store.inspect import format_summary, save_preview, summarise, verification_error, verify

    store = StackStore.open(path, "r", storage_options)
    problems = verify(store, storage_options) if verify_chunks else []
    failure = verification_error(store, problems)
    bad_shards = tuple(sorted({p.shard for p in problems if p.fatal and p.shard is not None}))
    try:
        summary: dict[str, Any] | None = summarise(store, storage_options=storage_options, skip_shards=bad_shards)
    except StoreError:
        if failure is None:
            raise
        summary = None  # the damage that verify found also breaks the summary
    if verify_chunks:
        summary = summary or {"path": str(path)}
        summary["verify"] = {"ok": failure is None,
                             "problems": [{"shard": p.shard, "array": p.array, "message": p.message, "fatal": p.fatal}
                                          for p in problems]}
    if preview is not None and failure is None:
        save_preview(store, preview)
    if as_json:
        echo(json.dumps(summary, indent=1))
    else:
        if summary is not None and "n_samples" in summary:
            echo(format_summary(summary))
        if verify_chunks:
            echo("  verify      " + ("ok: every chunk decodes" if not problems else f"{len(problems)} problem(s)"))
            for problem in problems:
                echo(f"    {'ERROR' if problem.fatal else 'note '} {problem.message}")
        if preview is not None and failure is None:
            echo(f"  preview     {preview}")
    if failure is not None:
        raise failure
