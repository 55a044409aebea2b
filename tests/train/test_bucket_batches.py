"""Multi-bucket batch schedule: ranks agree on every step's bucket (also across processes with
different hash seeds), batch sizes per bucket, no item twice, keep probabilities."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from osora.train.bucket_batches import BucketRule, epoch_schedule
from osora.train.buckets import Bucket

A, B, IMG = Bucket(33, 192, 336), Bucket(65, 192, 336), Bucket(1, 256, 256)
RULES = {A: BucketRule(3), B: BucketRule(2), IMG: BucketRule(5, keep=0.5)}


def items(n=400):
    return [(A, B, IMG, None)[i % 4] for i in range(n)]


def test_every_step_one_bucket_for_all_ranks_with_its_batch_size():
    schedule = epoch_schedule(items(), RULES, world=2, seed=0, epoch=0)
    seen = []
    for step in schedule:
        assert len(step) == 2 and len({b.bucket for b in step}) == 1
        assert all(len(b.items) == RULES[step[0].bucket].batch_size for b in step)
        seen += [i for b in step for i in b.items]
    assert len(seen) == len(set(seen))  # no item twice in an epoch
    per_bucket = Counter(step[0].bucket for step in schedule)
    assert per_bucket[A] == 100 // (3 * 2) and per_bucket[B] == 100 // (2 * 2)
    assert all(items()[i] is not None for i in seen)


def test_same_seed_and_epoch_same_schedule_else_another():
    one = epoch_schedule(items(), RULES, world=2, seed=3, epoch=1)
    assert one == epoch_schedule(items(), RULES, world=2, seed=3, epoch=1)
    assert one != epoch_schedule(items(), RULES, world=2, seed=3, epoch=2)
    # buckets interleave rather than run in blocks
    order = [step[0].bucket for step in one]
    assert sum(a != b for a, b in zip(order, order[1:])) > len(order) // 4


def test_keep_probability_subsamples_a_bucket():
    many = [IMG] * 4000
    schedule = epoch_schedule(many, {IMG: BucketRule(1, keep=0.25)}, world=1, seed=0, epoch=0)
    assert 900 < len(schedule) < 1100  # 1000 ± 3.3σ of Binomial(4000, 0.25)


def test_processes_with_different_hash_seeds_agree():
    code = ("import json; from osora.train.bucket_batches import BucketRule, epoch_schedule;"
            "from osora.train.buckets import Bucket;"
            "its = [Bucket(33, 1, 1), Bucket(1, 2, 2), 'x'] * 50;"
            "r = {Bucket(33, 1, 1): BucketRule(2), Bucket(1, 2, 2): BucketRule(3), 'x': "
            "BucketRule(1, keep=0.5)};"
            "print(json.dumps([[str(b.bucket), b.items] for s in epoch_schedule(its, r, "
            "world=2, seed=1, epoch=0) for b in s]))")
    outs = [subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                           text=True, env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2")]
    assert json.loads(outs[0]) == json.loads(outs[1]) != []


def test_a_bucket_without_a_rule_is_named():
    with pytest.raises(ValueError, match="no batch size for buckets.*129x192x336"):
        epoch_schedule([Bucket(129, 192, 336)], RULES, world=1, seed=0, epoch=0)
    with pytest.raises(ValueError, match="batch_size"):
        BucketRule(0)
