"""`s2s2 stack inspect`: summarise a store, draw a preview grid, and verify every chunk."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from s2s2.store.fidelity import SCORES, mask_fidelity, normalised_fidelity, stack_appearance
from s2s2.store.layout import to_unit_float
from s2s2.pipeline.errors import StoreError
from s2s2.store.manifest import StackGenerator, utc_now
from s2s2.store.damage import DECODE_ERRORS, repair_advice
from s2s2.store.stack_store import StackStore

FIDELITY_MIN_COMPLETE = 0.25  # below this completion the fidelity sample is too thin to report
FIDELITY_MAX_SAMPLES = 64


def _filesystem(path: Any, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(str(path), **(storage_options or {}))


def bytes_on_disk(path: Any, storage_options: dict[str, Any] | None = None) -> int:
    """Total size of every object under the store path (local or fsspec URL)."""
    fs, root = _filesystem(path, storage_options)
    return int(fs.du(root, total=True))


def stale_temporaries(path: Any, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Leftover `*.partial` files of writers killed mid-write (harmless: never renamed into place)."""
    fs, root = _filesystem(path, storage_options)
    return sorted(p for p in fs.find(root) if fnmatch.fnmatch(p, "*.partial"))


def writers_now(store: StackStore) -> dict[str, Any] | None:
    """The `generate` runs writing the store now and the shards they hold (None for Store objects)."""
    if not isinstance(store.path, (str, Path)):
        return None
    book = store.claims
    held = book.live_claims(store.pending_shards())
    return {"running": [f"{w.host} pid {w.pid}" for w in book.running_writers()], "claimed_shards": sorted(held)}


def class_pixel_share(masks: np.ndarray, num_classes: int) -> list[float]:
    """Fraction of all mask pixels in each class."""
    counts = np.bincount(masks.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    return (counts / max(int(counts.sum()), 1)).tolist()


def _sample_done(store: StackStore, seed: int, skip_shards: tuple[int, ...]) -> np.ndarray | None:
    """Up to FIDELITY_MAX_SAMPLES fully done samples, sorted (None if too few to score)."""
    done = store.done_ledger().all(axis=1)
    if done.mean() < FIDELITY_MIN_COMPLETE:
        return None
    for shard in skip_shards:
        rows = store.shard_samples(shard)
        done[rows.start:rows.stop] = False
    if done.sum() < 2:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.flatnonzero(done), size=min(int(done.sum()), FIDELITY_MAX_SAMPLES), replace=False))


def _fidelity(originals: np.ndarray, masks: np.ndarray, stack: np.ndarray, seed: int, num_classes: int,
              ceiling: dict) -> dict:
    """Mask fidelity of `stack` with the ceiling (the originals' own scores) and the normalised scores.
    Every call with one seed pairs the samples with the same unrelated masks."""
    scores = mask_fidelity(originals, masks, stack, np.random.default_rng(seed), num_classes=num_classes)
    ceiling_scores = {key: ceiling[key] for pair in SCORES.values() for key in pair}
    return {**scores, "ceiling": ceiling_scores, "normalised": normalised_fidelity(scores, ceiling)}


def stack_quality(store: StackStore, seed: int = 0, skip_shards: tuple[int, ...] = ()) -> dict | None:
    """Mask fidelity (with its ceiling and normalised) and appearance diversity of the stack, over
    up to FIDELITY_MAX_SAMPLES fully done samples, for the whole stack and for each of its sources.
    None if too few samples are done. Samples of `skip_shards` (found broken by `verify`) are left out.
    """
    picked = _sample_done(store, seed, skip_shards)
    if picked is None:
        return None
    num_classes = len(store.manifest.class_names)
    originals, masks = store.read_originals(picked), store.read_masks(picked)
    stack = np.stack([np.stack([store.read_stack(int(i), k) for k in range(store.k)]) for i in picked])
    ceiling = mask_fidelity(originals, masks, originals[:, None], np.random.default_rng(seed), num_classes)
    quality = {"mask_fidelity": _fidelity(originals, masks, stack, seed, num_classes, ceiling),
               "appearance": stack_appearance(originals, stack, masks, num_classes)}
    generator = store.manifest.generator
    if generator is not None and len(generator.sources) > 1:
        quality["by_source"] = [
            {"kind": source.kind, "k_start": source.k_start, "k_stop": source.k_stop, "label": source.label,
             "mask_fidelity": _fidelity(originals, masks, stack[:, source.k_start:source.k_stop], seed, num_classes,
                                        ceiling),
             "appearance": stack_appearance(originals, stack[:, source.k_start:source.k_stop], masks, num_classes)}
            for source in generator.sources]
    return quality


def _generator_summary(generator: StackGenerator | None) -> dict | None:
    """The manifest's generator as JSON, each source labelled with its k range and kind."""
    if generator is None:
        return None
    summary = generator.model_dump(mode="json")
    for entry, source in zip(summary["sources"], generator.sources):
        entry["label"] = source.label
    return summary


def summarise(store: StackStore, with_fidelity: bool = True, storage_options: dict[str, Any] | None = None,
              skip_shards: tuple[int, ...] = ()) -> dict:
    """Everything `inspect` shows, as JSON-ready values (fidelity skips `skip_shards`)."""
    m = store.manifest
    masks = store.read_masks(np.arange(store.n_samples))
    summary = {
        "path": str(store.path),
        "dataset": m.dataset_name,
        "split": m.split,
        "fingerprint": m.dataset_fingerprint,
        "modality": m.modality,
        "class_names": list(m.class_names),
        "class_pixel_share": class_pixel_share(masks, len(m.class_names)),
        "n_samples": m.n_samples,
        "k": m.k,
        "image_shape": list(m.image_shape),
        "dtype": m.dtype,
        "compression": m.compression,
        "shard_size": m.shard_size,
        "num_shards": store.num_shards,
        "pending_shards": store.pending_shards(),
        "complete_fraction": store.complete_fraction(),
        "bytes_on_disk": bytes_on_disk(store.path, storage_options) if isinstance(store.path, (str, Path)) else None,
        "status": m.status,
        "writers": writers_now(store),
        "generator": _generator_summary(m.generator),
        "schema_version": m.schema_version,
        "software_version": m.software_version,
        "created": m.created.isoformat(),
        "updated": m.updated.isoformat(),
        "age_hours": (utc_now() - m.created).total_seconds() / 3600.0,
    }
    if with_fidelity:
        try:
            quality = stack_quality(store, skip_shards=skip_shards) or {}
        except Exception as err:  # a chunk that does not decode: say so, `--verify` names the shard
            quality = {}
            summary["mask_fidelity_error"] = f"{type(err).__name__}: {err} (run with --verify)"
        summary["mask_fidelity"] = quality.get("mask_fidelity")
        summary["appearance"] = quality.get("appearance")
        if "by_source" in quality:
            summary["by_source"] = quality["by_source"]
    return summary


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    raise AssertionError("unreachable")


def format_summary(s: dict) -> str:
    """Readable text of `summarise`'s dict."""
    c, h, w = s["image_shape"]
    n, k = s["n_samples"], s["k"]
    lines = [
        f"stack store  {s['path']}",
        f"  dataset     {s['dataset']} (split {s['split']}), {s['modality']}",
        f"  fingerprint {s['fingerprint'][:16]}…",
        "  classes     " + ", ".join(f"{name} {100 * share:.1f}%" for name, share in
                                     zip(s["class_names"], s["class_pixel_share"])),
        f"  samples     N={n}, K={k}, image {c}x{h}x{w}, {s['dtype']}, {s['compression']}",
        f"  layout      {s['num_shards']} shards of {s['shard_size']} samples "
        f"(shard {s['shard_size']}x{k}x{c}x{h}x{w}, chunk 1x1x{c}x{h}x{w} = one image)",
        f"  on disk     {_human_bytes(s['bytes_on_disk'])}",
        f"  complete    {100 * s['complete_fraction']:.1f}% ({len(s['pending_shards'])} shards pending), "
        f"status {s['status']}",
        f"  created     {s['created']} ({s['age_hours']:.1f} h ago), updated {s['updated']}",
    ]
    writers = s.get("writers")
    if writers and (writers["running"] or writers["claimed_shards"]):
        lines.append(f"  writing     {len(writers['running'])} generate run(s) ({', '.join(writers['running'])}), "
                     f"{len(writers['claimed_shards'])} shard(s) claimed")
    gen = s["generator"]
    if gen:
        for number, source in enumerate(gen["sources"]):
            lines += _source_lines("  generator   " if number == 0 else " " * 14, source)
    else:
        lines.append("  generator   none bound yet")
    fid = s.get("mask_fidelity")
    if fid:
        lines += _quality_lines(fid, s["appearance"])
        for part in s.get("by_source", []):
            lines.append(f"  source      {part['label']}:")
            lines += ["    " + line[2:] for line in _quality_lines(part["mask_fidelity"], part["appearance"])
                      if not line.lstrip().startswith("ceiling")]
    elif "mask_fidelity_error" in s:
        lines.append(f"  fidelity    not computed: {s['mask_fidelity_error']}")
    elif "mask_fidelity" in s:
        lines.append(f"  fidelity    not computed (needs >= {100 * FIDELITY_MIN_COMPLETE:.0f}% complete)")
    return "\n".join(lines)


def _source_lines(lead: str, source: dict) -> list[str]:
    """One source of the generator: its k range and what decides its pixels."""
    ident, where = source["identity"], f"{source['label']}: "
    if ident["kind"] == "synth":
        p = ident["params"]
        return [f"{lead}{where}labels-to-image, seed {ident['seed']}, label mean U{tuple(p['mean'])}, "
                f"SD U{tuple(p['std'])}, separation {p['separation']}, MONAI {ident['monai_version']}"]
    return [f"{lead}{where}{ident['base_model']} + ControlNet {ident['controlnet_hash'][:12]}, {ident['scheduler']} "
            f"{ident['steps']} steps, guidance {ident['guidance_scale']}, eta {ident['eta']}, seed {ident['seed']}, "
            f"{ident['resolution']} px",
            f"{' ' * len(lead)}  prompt {ident['prompt_template']!r}"]


def _score(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _quality_lines(fid: dict, look: dict) -> list[str]:
    """Fidelity, its ceiling, the normalised score and the appearance diversity, as text lines."""
    ceiling, normalised = fid["ceiling"], fid["normalised"]
    order = look["order_changed_fraction"]
    return [
        f"  fidelity    Dice vs own mask {fid['dice_own']:.3f}, vs unrelated mask {fid['dice_chance']:.3f} "
        f"(adaptive {fid['dice_own_adaptive']:.3f} / {fid['dice_chance_adaptive']:.3f}; {fid['n_images']} images)",
        f"  ceiling     the originals score {ceiling['dice_own']:.3f} / {ceiling['dice_chance']:.3f} "
        f"(adaptive {ceiling['dice_own_adaptive']:.3f} / {ceiling['dice_chance_adaptive']:.3f})",
        f"  normalised  {_score(normalised['global'])} (adaptive {_score(normalised['adaptive'])}) of the originals' "
        "margin over chance",
        f"  appearance  per-tissue mean spread across k {_score(look['class_mean_spread_across_k'])} "
        f"(gap between tissues {_score(look['class_mean_gap'])}); tissue brightness order differs from the "
        f"original's in " + ("n/a" if order is None else f"{100 * order:.0f}%") + f" of {look['n_images']} images",
    ]


def column_titles(store: StackStore) -> list[str]:
    """Preview column titles: mask, original, and each k with the source that fills it."""
    generator = store.manifest.generator
    kinds = generator.source_of_k() if generator is not None else ["not bound"] * store.k
    return ["mask", "original"] + [f"k={k}\n{kind}" for k, kind in enumerate(kinds)]


def save_preview(store: StackStore, path: str | Path, n_rows: int = 4) -> None:
    """PNG grid, one row per sample: mask | original | its K stack images, each column titled with
    its k and source. Rows are spread evenly over the done samples (over all samples while none is done)."""
    from s2s2.pipeline.palette import mask_to_rgb
    from s2s2.pipeline.viz import save_grid, to_rgb_uint8

    done = np.flatnonzero(store.done_ledger().all(axis=1))
    candidates = done if len(done) else np.arange(store.n_samples)
    picked = np.unique(candidates[np.linspace(0, len(candidates) - 1, min(n_rows, len(candidates))).round().astype(int)])
    num_classes = len(store.manifest.class_names)
    rows = []
    for i in picked:
        i = int(i)
        row = [mask_to_rgb(store.read_mask(i), num_classes), to_rgb_uint8(to_unit_float(store.read_original(i)))]
        row += [to_rgb_uint8(to_unit_float(store.read_stack(i, k))) for k in range(store.k)]
        rows.append(row)
    ids = store.ids
    save_grid(rows, path, row_titles=[ids[int(i)] for i in picked],
              col_titles=column_titles(store),
              legend=list(store.manifest.class_names))


@dataclass(frozen=True)
class Problem:
    """One finding of `verify`: which shard (or None for the whole store), which array, what is wrong."""

    shard: int | None
    message: str
    fatal: bool = True
    array: str | None = None


def _check_images(images: np.ndarray, done: np.ndarray, rows: range, shard: int) -> list[Problem]:
    problems = []
    flat = images.reshape(*images.shape[:2], -1).astype(np.float32)
    for r in range(images.shape[0]):
        for k in range(images.shape[1]):
            if not done[r, k]:
                continue
            where = f"shard {shard}: sample {rows.start + r} image k={k}"
            pixels = flat[r, k]
            if np.isnan(pixels).any():
                problems.append(Problem(shard, f"{where} has NaN pixels", array="stack"))
            elif not pixels.any():
                problems.append(Problem(shard, f"{where} is marked done but all zero (ledger disagrees with data)",
                                        array="stack"))
            elif pixels.min() == pixels.max():
                problems.append(Problem(shard, f"{where} is constant ({pixels[0]})", array="stack"))
    return problems


def verify_shard(store: StackStore, shard: int) -> list[Problem]:
    """Decode every file of one shard (done ledger, originals, masks, stack) and check the done images."""
    decoded, problems = {}, []
    for array in ("done", "originals", "masks", "stack"):
        try:
            decoded[array] = store.decode_shard(array, shard)
        except DECODE_ERRORS as err:  # named here; `run_inspect` turns them into one error with the fix
            problems.append(Problem(shard, f"shard {shard}: {array} cannot be decoded ({store.shard_file(array, shard)}): "
                                           f"{type(err).__name__}: {str(err)[:120]}", array=array))
    if "stack" in decoded:
        done = decoded.get("done", np.zeros(decoded["stack"].shape[:2], dtype=bool))
        problems += _check_images(decoded["stack"], done, store.shard_samples(shard), shard)
    return problems


def verify(store: StackStore, storage_options: dict[str, Any] | None = None) -> list[Problem]:
    """Read every chunk of the store; list the problems found (empty list: the store is sound)."""
    problems: list[Problem] = []
    for shard in tqdm(range(store.num_shards), desc="verify", unit="shard", leave=False):
        problems += verify_shard(store, shard)
    if isinstance(store.path, (str, Path)):
        for leftover in stale_temporaries(store.path, storage_options):
            problems.append(Problem(None, f"stale temporary file of an interrupted writer: {leftover} "
                                          "(harmless, never read; may be deleted)", fatal=False))
    return problems


def verification_error(store: StackStore, problems: list[Problem]) -> StoreError | None:
    """The error that `--verify` exits with: every bad shard and how to repair it (None if sound)."""
    damaged = sorted({(p.array or "stack", p.shard) for p in problems if p.fatal and p.shard is not None})
    if not damaged:
        return None
    shards = sorted({shard for _, shard in damaged})
    return StoreError(f"{store.path}: verification failed in shard(s) {', '.join(str(s) for s in shards)}; "
                      f"fix: {repair_advice(store.path, damaged, store.shard_file)}")
