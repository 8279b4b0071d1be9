"""The generator binding of a stack store: which generator's images fill the stack, and the
protocol by which `generate` runs bind, rebind and write shards under it.

One generator is bound to a store at a time; its images are never mixed with another's. The
binding records live with the shard claims (`s2s2.store.claims`): the highest-numbered binding
is in force. A run with another generator is refused unless it overwrites, which rebinds the
store and clears the done flags of the changed sources' ks only (their images are made again).
`done_for(generator)` is the done ledger as a generator sees it: flags set under another binding
do not count, so readers that must see one generator's images (training) ask it, not the ledger.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from s2s2.pipeline.errors import StoreError
from s2s2.store.claims import Binding, Claim, ClaimBook, new_writer_id
from s2s2.store.manifest import StackGenerator, changed_sources


class GeneratorBinding:
    """The binding half of `StackStore` (mixed into it): it reads and writes the store through the
    store's own ledger and manifest methods (`done_ledger`, `shard_ledger`, `write_shard`,
    `_write_ledger`, `_unmark_done`, `_update_manifest`)."""

    @property
    def claims(self) -> ClaimBook:
        """The claim, binding and writer records of this store."""
        if not isinstance(self.path, (str, Path)):
            raise StoreError(f"{self.path!r}: shard claims need a store path or URL, not a Store object")
        return ClaimBook(self.path, self.storage_options)

    def current_binding(self) -> Binding | None:
        """The generator binding in force. A store bound before claim records existed reports its
        manifest's generator as binding number -1."""
        binding = self.claims.binding()
        if binding is None and self.manifest.generator is not None:
            return Binding(seq=-1, identity=self.manifest.generator.model_dump(mode="json"), ready=True, created=0.0)
        return binding

    def _changes(self, binding: Binding, generator: StackGenerator) -> tuple[list[str], list[int]]:
        """What differs from the generator in force: one line per changed source, and its ks."""
        return changed_sources(StackGenerator.model_validate(binding.identity), generator)

    def _other_generator(self, binding: Binding, generator: StackGenerator) -> str:
        return (f"{self.path}: the store was filled by another generator ("
                + "; ".join(self._changes(binding, generator)[0]) + ")")

    def check_generator(self, generator: StackGenerator, writer: str, overwrite: bool = False,
                        force: bool = False) -> int | None:
        """Before a `generate` run: may `generator` fill this store? Returns the number of the binding
        that the run will replace (with `overwrite`, at its first shard write), or None.

        Refuses another generator unless `overwrite` (which regenerates the images of the changed
        sources only), and `overwrite` while another run is writing (a running writer or a live shard
        claim) unless `force`."""
        if generator.k != self.k:
            raise StoreError(f"{self.path}: the generator's sources fill K={generator.k} images per sample, "
                             f"the store holds K={self.k}; fix: set store.k to {generator.k} or use another store")
        binding = self.current_binding()
        if binding is None or binding.identity == generator.model_dump(mode="json"):
            return None
        if not overwrite:
            raise StoreError(self._other_generator(binding, generator) + "; its images would mix with this "
                             "generator's; fix: pass --overwrite to regenerate those images")
        book = self.claims
        others = book.running_writers(except_writer=writer)
        held = book.live_claims(list(range(self.num_shards)), except_writer=writer)
        if (others or held) and not force:
            # the runs, not their dask workers: a claim names its run (host:pid:tag) and the worker apart
            runs = sorted({f"{w.host} pid {w.pid}" for w in others}
                          | {" pid ".join(c.writer.split(":")[:2]) for c in held.values()})
            raise StoreError(f"{self.path}: another `s2s2 generate` is writing this store (run {', '.join(runs)}; "
                             f"{len(held)} shard(s) claimed); --overwrite now would mix two generators; fix: wait "
                             "for it to finish (or stop it and wait for its claims to expire), then rerun with "
                             "--overwrite; or add --force to take over (the other run stops at its next shard)")
        return binding.seq

    def refuse_other_generator(self, generator: StackGenerator, replaces: int | None) -> None:
        """Raise if the store is bound to another generator than `generator` and the binding in force
        is not the one this run was allowed to replace (a writer checks before generating)."""
        binding = self.current_binding()
        if binding is not None and binding.identity != generator.model_dump(mode="json") and binding.seq != replaces:
            raise StoreError(self._other_generator(binding, generator) + " since this run started (another "
                             "`generate --overwrite` took it over); this run stops, its unfinished shards stay "
                             "pending; fix: rerun with the generator you want to keep (with --overwrite if it changed)")

    def stale_ks(self, generator: StackGenerator) -> list[int]:
        """The ks whose done flags do not record `generator`'s images: every k of an unbound store,
        the changed sources' ks while another generator is bound or a rebinding is unfinished."""
        binding = self.current_binding()
        if binding is None:
            return list(range(self.k))
        if binding.identity != generator.model_dump(mode="json"):
            return self._changes(binding, generator)[1]
        return [] if binding.ready else list(binding.clear_ks)

    def bound_generator(self) -> StackGenerator | None:
        """The generator in force (None for a store no `generate` run has bound)."""
        binding = self.current_binding()
        return None if binding is None else StackGenerator.model_validate(binding.identity)

    def current_done(self) -> np.ndarray:
        """The done ledger [N,K] as the generator in force sees it (what training may read): flags of
        ks an unfinished rebinding is clearing do not count. A store no `generate` run has bound (its
        images written by one process through `write_shard`) and a store opened as a Store object
        (no claim records to read) count their flags as they are."""
        generator = self.bound_generator() if isinstance(self.path, (str, Path)) else None
        return self.done_ledger() if generator is None else self.done_for(generator)

    def done_for(self, generator: StackGenerator, rows: range | None = None) -> np.ndarray:
        """The done ledger [N,K] (or its `rows`) as `generator` sees it: stale flags count as not done."""
        done = self.done_ledger() if rows is None else self.shard_ledger(rows)
        done[:, self.stale_ks(generator)] = False
        return done

    def pending_for(self, generator: StackGenerator) -> list[int]:
        """Shards in which `generator` still has images to make."""
        done = self.done_for(generator)
        return [shard for shard in range(self.num_shards)
                if not done[self.shard_samples(shard).start:self.shard_samples(shard).stop].all()]

    def bind_for_write(self, generator: StackGenerator, replaces: int | None, stale_seconds: float) -> None:
        """Make sure the store is bound to `generator` before a shard is written: bind an unbound
        store, rebind (clearing the done flags of the changed sources) when `replaces` is the binding
        in force, wait for a peer's rebinding to `generator` to finish; raise if another generator is
        bound.

        Binding happens here, at the first shard write, so a run whose generator fails to load or
        sample never binds the store. `stale_seconds`: a rebinding left unfinished this long (its
        writer died) is finished by this writer."""
        self._require_writable()
        wanted = generator.model_dump(mode="json")
        book = self.claims
        while True:
            binding = self.current_binding()
            if binding is None:
                if book.create_binding(0, wanted, ready=True) is not None:
                    self._update_manifest(generator=generator, status="generating")
                    return
            elif binding.identity == wanted:
                if binding.ready:
                    return
                if time.time() - binding.created > stale_seconds:
                    self._finish_rebinding(binding, generator)
                    return
                time.sleep(0.05)
            elif binding.seq == replaces:
                created = book.create_binding(binding.seq + 1, wanted, ready=False,
                                              clear_ks=self._changes(binding, generator)[1])
                if created is not None:
                    self._finish_rebinding(created, generator)
                    return
            else:
                self.refuse_other_generator(generator, replaces)

    def _finish_rebinding(self, binding: Binding, generator: StackGenerator) -> None:
        """Clear the done flags of the changed sources' ks (their images are made again), then
        declare the binding ready."""
        done = self.done_ledger()
        done[:, list(binding.clear_ks)] = False
        self._write_ledger(done)
        self.claims.mark_ready(binding)
        self._update_manifest(generator=generator, status="generating")

    def bind_generator(self, generator: StackGenerator, overwrite: bool = False) -> None:
        """Bind `generator` now, for a single process that writes shards itself (`generate` binds
        at its first shard write instead); same checks and records as a `generate` run."""
        writer = new_writer_id()
        self.bind_for_write(generator, self.check_generator(generator, writer, overwrite=overwrite), stale_seconds=0)

    def bound_to(self, generator: StackGenerator) -> bool:
        """True when `generator` is the one in force (and its rebinding, if any, is finished)."""
        binding = self.current_binding()
        return binding is not None and binding.ready and binding.identity == generator.model_dump(mode="json")

    def write_claimed_shard(self, claim: Claim, generator: StackGenerator, replaces: int | None,
                            stack_images: np.ndarray, stale_seconds: float) -> bool:
        """Write a shard made under `claim` for `generator`; False (nothing written) if another
        writer has taken the shard over.

        Order: bind, check the claim, write the images, mark them done, then check the binding
        again: a rebinding by a forced `--overwrite` that slipped in between clears the flags this
        writer just set (the shard stays pending), so images of two generators never count as done."""
        self.bind_for_write(generator, replaces, stale_seconds)
        if not self.claims.holds(claim):
            return False
        self.write_shard(claim.shard, stack_images)
        if not self.bound_to(generator):
            self._unmark_done(self.shard_samples(claim.shard))
            self.refuse_other_generator(generator, None)
        return True

    def refresh_status(self) -> str:
        """Recompute the status from the ledger, the generator from the binding, and record both."""
        self._require_writable()
        binding = self.current_binding()
        generator = StackGenerator.model_validate(binding.identity) if binding is not None else None
        if self.complete_fraction() == 1.0:
            status = "complete"
        else:
            status = "generating" if generator is not None else "initialised"
        return self._update_manifest(generator=generator, status=status).status
