"""The Zarr v3 stack store: manifest (`manifest`), array I/O (`stack_store`), single-image reads
(`fast_read`), damage diagnosis (`damage`), generator binding (`binding`) beside the writers'
claims (`claims`), inspection and verification (`inspect`), mask fidelity (`fidelity`).

Nothing here imports torch, so writer processes stay light.
"""
