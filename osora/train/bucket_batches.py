"""Multi-bucket batches (docs/recipe.md §6): each step trains on one bucket, with its batch
size, and every rank derives the same schedule from (seed, epoch) alone, so the ranks agree on
each step's bucket without talking to each other.

Per epoch: each bucket's items are kept with the bucket's keep probability (the reference's
bucket config is {resolution: {frames: (keep probability, batch size)}}), shuffled, and cut into
global batches of batch_size × world items (an incomplete tail is dropped: a step must give
every rank a full batch of one shape); the global batches of all buckets are then shuffled
together, so buckets appear in proportion to their data. Rank r takes the r-th batch_size items
of each global batch.

Pure Python with `random.Random` seeded from (seed, epoch): no torch, the same on every machine.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketBatch:
    """One step of one rank: the bucket and the indices (into the item list) it trains on."""

    bucket: Hashable
    items: tuple[int, ...]


@dataclass(frozen=True)
class BucketRule:
    """How a bucket trains: items kept with probability `keep`, `batch_size` per rank."""

    batch_size: int
    keep: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int ≥ 1, got {self.batch_size!r}")
        if not 0.0 <= self.keep <= 1.0:
            raise ValueError(f"keep must be a probability in [0, 1], got {self.keep!r}")


def epoch_schedule(item_buckets: Sequence[Hashable], rules: Mapping[Hashable, BucketRule], *,
                   world: int, seed: int, epoch: int) -> list[list[BucketBatch]]:
    """The epoch's steps: schedule[step][rank] = BucketBatch (module doc).

    item_buckets[i] is item i's bucket (None: the item has no bucket and is skipped). A bucket
    without a rule is an error naming it, so no data is dropped silently.
    """
    if not isinstance(world, int) or world < 1:
        raise ValueError(f"world must be an int ≥ 1, got {world!r}")
    groups: dict[Hashable, list[int]] = {}
    for i, bucket in enumerate(item_buckets):
        if bucket is not None:
            groups.setdefault(bucket, []).append(i)
    missing = [b for b in groups if b not in rules]
    if missing:
        names = sorted(getattr(b, "name", str(b)) for b in missing)
        raise ValueError(f"no batch size for buckets {names}; add them to "
                         "the bucket rules (params/buckets.yaml)")
    rng = random.Random(f"{seed}/{epoch}")  # str seeds hash the same on every machine
    global_batches: list[tuple[Hashable, list[int]]] = []
    for bucket in sorted(groups, key=str):  # a fixed order, whatever the input order
        rule = rules[bucket]
        kept = [i for i in groups[bucket] if rng.random() < rule.keep]
        rng.shuffle(kept)
        size = rule.batch_size * world
        global_batches += [(bucket, kept[s:s + size])
                           for s in range(0, len(kept) - size + 1, size)]
    rng.shuffle(global_batches)
    return [[BucketBatch(bucket, tuple(items[r * rules[bucket].batch_size:
                                             (r + 1) * rules[bucket].batch_size]))
             for r in range(world)]
            for bucket, items in global_batches]
