"""The Zarr v3 stack store: schema and manifest, crash-safe shard writer, pair reader, inspection.

Nothing here imports torch at module import except `reader.py`, so writer processes stay light.
"""
