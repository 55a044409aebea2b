"""A pinned version of a `latents_<level>` table, read a training step's rows at a time.

At start-up only the small columns are read (id, frames, height, width, latent_shape): they
give the items' order (by id, not the table's: the latents stage's workers append rows in the
order they finish, and the batches, indices into this order, must not depend on it) and their
buckets, which is all the bucket schedule needs. A step's latents and texts are then taken by
position (`Store.take`), only that rank's rows, so the table is never held whole: memory stays
that of a few batches whatever the table's size.

Bad input is an error naming the row and the table version, never a skip (a skip would shift
every later step's batch): a bucket whose rows disagree on the latent shape fails at start-up,
a latent whose bytes do not decode to its (checked) shape fails at the step that reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow.compute as pc
import torch

from osora.store import Store

INDEX_COLUMNS = ["id", "frames", "height", "width", "latent_shape"]
STEP_COLUMNS = ["id", "text", "latent", "latent_dtype", "latent_shape"]
Bucket = tuple[int, int, int]  # (frames, height, width) in pixels


class LatentTable:
    """Items 0 … n−1 are the table's rows in id order; `buckets[i]` is item i's bucket."""

    def __init__(self, store: Store, table: str, version: int):
        self.store, self.table, self.version = store, table, version
        index = store.read(table, version=version, columns=INDEX_COLUMNS)
        order = pc.sort_indices(index, sort_keys=[("id", "ascending")])  # item → position
        index = index.take(order)
        # Arrays, not Python lists: 8 bytes a row for the position and the id's own bytes,
        # where a list of str costs ~90 bytes a row (100k rows: 9 MB)
        self.positions: np.ndarray = order.to_numpy()  # (N,) int64
        self._ids = index.column("id").combine_chunks()  # (N,) string
        shared: dict[Bucket, Bucket] = {}  # one tuple per bucket, not one per row
        self.buckets: list[Bucket] = [
            shared.setdefault(b, b) for b in zip(index.column("frames").to_pylist(),
                                                 index.column("height").to_pylist(),
                                                 index.column("width").to_pylist())]
        self.latent_shapes = self._shape_per_bucket(index.column("latent_shape").to_pylist())

    def id_of(self, item: int) -> str:
        return self._ids[item].as_py()

    def item_of(self, row_id: str) -> int:
        """The item of a row id; ValueError when the table has no such row."""
        found = pc.index(self._ids, row_id).as_py()
        if found < 0:
            raise ValueError(f"{self.name} has no row {row_id!r}")
        return found

    @property
    def name(self) -> str:
        """"latents_256px@3": the table and its version, as errors name it."""
        return f"{self.table}@{self.version}"

    def __len__(self) -> int:
        return len(self._ids)

    def _shape_per_bucket(self, shapes: list[list[int]]) -> dict[Bucket, tuple[int, ...]]:
        """bucket → the latent shape (C, T', H', W') all its rows share; ValueError naming the
        rows of a bucket whose rows disagree (the batch of a step is one shape)."""
        seen: dict[Bucket, dict[tuple[int, ...], list[str]]] = {}
        for item, (bucket, shape) in enumerate(zip(self.buckets, shapes)):
            seen.setdefault(bucket, {}).setdefault(tuple(shape), []).append(item)
        for bucket, by_shape in seen.items():
            if len(by_shape) > 1:
                common = max(by_shape, key=lambda s: len(by_shape[s]))
                odd = {s: [self.id_of(i) for i in items[:5]]
                       for s, items in by_shape.items() if s != common}
                raise ValueError(
                    f"{self.name}: bucket {'x'.join(map(str, bucket))} holds latents of shape "
                    f"{common} and also {odd} (rows, up to 5 per shape): those rows are corrupt "
                    "or come from another AE; rerun the latents stage")
        return {bucket: next(iter(by_shape)) for bucket, by_shape in seen.items()}

    def read(self, items: Sequence[int]) -> tuple[torch.Tensor, list[str]]:
        """Items' latents (B, C, T', H', W') float32 and texts: one `take` of their rows."""
        from osora.data.latents import read_latent

        rows = self.store.take(self.table, [int(self.positions[i]) for i in items],
                               self.version, columns=STEP_COLUMNS).to_pylist()
        latents = []
        for item, row in zip(items, rows):
            if row["id"] != self.id_of(item):  # the version was pinned: only a broken store
                raise ValueError(f"{self.name}: position {self.positions[item]} holds row "
                                 f"{row['id']}, not {self.id_of(item)}; the table changed "
                                 "under its pinned version")
            try:
                latent = read_latent(row)  # (C, T', H', W')
            except ValueError as err:
                raise ValueError(f"{self.name}: {err}") from None
            latents.append(latent.float())
        return torch.stack(latents), [row["text"] for row in rows]
