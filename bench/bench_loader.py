"""The DiT loader over synthetic latents tables: peak memory and batches per second by table size.

    .venv/bin/python bench/bench_loader.py [--rows 1000 10000 100000] [--paper-rows 256]
        [--steps 200] [--store DIR] [--s3-rows 1000] [--ahead 2] [--step-ms 120]
        [--rows-per-file N]

For each size a latents table of that many rows is written to a local store (streamed, never
whole in memory), all rows in the tiny profile's stage-1 bucket (16 frames at 64², the latent
shape of params/ae.yaml's AE); then a child process, so that its peak RSS is the loader's
alone, builds `LatentBatches` over the table (start-up: the index from the small columns),
makes `--steps` batches of rank 0 of 2 one after the other (the loader's own rate), then
`--steps` more through the `Prefetcher` with `--ahead` threads while a stand-in step sleeps
`--step-ms` (the tiny stage-1 step is about 120 ms on 2 cores): the time a step waits for its
batch is the loader time training sees. `--paper-rows` adds one table of paper-size rows: a
256px 129-frame clip of the paper profile (HunyuanVideo VAE latent (16, 33, 24, 42), bfloat16,
1 MiB a row) at that bucket's batch size. Every clip has its own caption, and the captions'
embeddings (the tiny encoder's shape, 48 × 384 bfloat16: 36 KiB a row) are a `text_embeds`
table as the text_embed stage writes it, which each step reads by key (`TableText`): the
loader's reads are one take of latents and one take of texts.
Online text encoding is the text encoder's own cost, not measured here.
`--s3-rows` repeats those tiny sizes on a real S3 API (moto's server on 127.0.0.1,
tests/s3_server.py): every step's take then goes over HTTP.

Prints one JSON line per table: store (local or s3), rows, latent shape, batch size, start-up
seconds, batches/s and ms per batch made in turn, ms a step waits behind the prefetcher and
its share of the step, peak RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TABLE = "latents_bench"
WRITE_CHUNK = 1000  # rows per written batch
ENCODER = "bench-encoder"  # the identity the text rows are keyed by
TEXT_SHAPE = (48, 384)  # the tiny profile's MiniLM: max_length 48, 384 features


def caption(i: int) -> str:
    return f"a synthetic clip {i}"


def tiny_shape() -> tuple[tuple[int, int, int], tuple[int, ...], int, str]:
    """(bucket (frames, h, w), latent (C, T', H', W'), batch size, storage dtype) of the tiny
    stage 1: its first latent set's smallest frame count, square at its resolution."""
    from osora.config import load_settings
    from osora.data.latents import autoencoder_spec

    settings = load_settings()
    spec = autoencoder_spec(settings.ae)
    latent_set = next(iter(settings.ae.latents.sets.values()))
    frames, size = min(latent_set.frames), latent_set.resolution
    latent = (spec.latent_channels, frames // spec.temporal_down, size // spec.spatial_down,
              size // spec.spatial_down)
    batch = settings.buckets.stages["stage1"][frames].batch_size
    return (frames, size, size), latent, batch, settings.ae.latents.storage_dtype


def paper_shape() -> tuple[tuple[int, int, int], tuple[int, ...], int, str]:
    """A 256px 16:9 129-frame clip of the paper profile (HunyuanVideo VAE: 4× in time, causal,
    8× in space, 16 channels)."""
    from osora.config import load_settings

    batch = load_settings("paper").buckets.stages["stage1"][129].batch_size
    return (129, 192, 336), (16, 33, 24, 42), batch, "bfloat16"


def write_table(store, rows: int, bucket, latent, dtype: str,
                rows_per_file: int | None = None) -> int:
    """`rows` rows of one bucket with random latents, written as a stream, at most
    `rows_per_file` a data file (None: Lance's default); the version."""
    import pyarrow as pa

    from osora.data.latents import latent_columns
    from osora.schemas import LATENTS

    frames, height, width = bucket

    def batches():
        g = torch.Generator().manual_seed(0)
        for start in range(0, rows, WRITE_CHUNK):
            chunk = [{"id": f"clip{i:09d}", "video_id": f"video{i // 8}",
                      "text": caption(i), "fps": 24.0, "frames": frames,
                      "height": height, "width": width, "dit_scale": True, "ae_kind": "bench",
                      "ae_sha256": "0" * 64,
                      **latent_columns(torch.randn(latent, generator=g), dtype)}
                     for i in range(start, min(rows, start + WRITE_CHUNK))]
            yield pa.RecordBatch.from_pylist(chunk, schema=LATENTS)

    return store.write(TABLE, pa.RecordBatchReader.from_batches(LATENTS, batches()),
                       mode="overwrite" if store.exists(TABLE) else "create",
                       max_rows_per_file=rows_per_file)


def write_texts(store, rows: int, rows_per_file: int | None = None) -> int:
    """The captions' text_embeds table (random bfloat16 embeddings); the version."""
    import pyarrow as pa

    from osora.data.text_embeds import NULL_TEXT, embedding_row, text_key
    from osora.data.text_embeds import TABLE as TEXTS
    from osora.schemas import TEXT_EMBEDS

    length, dim = TEXT_SHAPE

    def batches():
        g = torch.Generator().manual_seed(1)
        texts = [NULL_TEXT, *(caption(i) for i in range(rows))]
        for start in range(0, len(texts), WRITE_CHUNK):
            chunk = [embedding_row(text_key(ENCODER, t), t, ENCODER,
                                   torch.randn(length, dim, generator=g),
                                   torch.ones(length, dtype=torch.bool),
                                   torch.randn(dim, generator=g), "bfloat16")
                     for t in texts[start:start + WRITE_CHUNK]]
            yield pa.RecordBatch.from_pylist(chunk, schema=TEXT_EMBEDS)

    return store.write(TEXTS, pa.RecordBatchReader.from_batches(TEXT_EMBEDS, batches()),
                       mode="overwrite" if store.exists(TEXTS) else "create",
                       max_rows_per_file=rows_per_file)


def measure(root: str, options: dict, version: int, text_version: int, frames: int,
            batch_size: int, steps: int, ahead: int, step_ms: float) -> dict:
    """In the child: start-up, `steps` batches of rank 0 of 2 in turn, `steps` more behind
    the prefetcher, and the peak RSS (module doc)."""
    from osora.store import Store
    from osora.train.bucket_batches import BucketRule
    from osora.train.dit_batches import LatentBatches
    from osora.train.latent_table import LatentTable
    from osora.train.prefetch import Prefetcher
    from osora.train.text_source import TableText

    start = time.perf_counter()
    store = Store(root, options)
    table = LatentTable(store, TABLE, version)
    texts = TableText(store, "text_embeds", text_version, ENCODER)
    batches = LatentBatches(table, texts, {frames: BucketRule(batch_size)}, world=2, rank=0,
                            seed=0)
    batches.step_batch(0)  # the first epoch's schedule is part of start-up
    startup = time.perf_counter() - start
    start = time.perf_counter()
    for step in range(steps):
        batches(step)
    elapsed = time.perf_counter() - start
    fetch, waited = Prefetcher(batches, ahead=ahead), 0.0
    fetch(steps)  # the first batch of a run is made on the spot
    for step in range(steps + 1, 2 * steps + 1):
        start = time.perf_counter()
        fetch(step)
        waited += time.perf_counter() - start
        time.sleep(step_ms / 1000)  # the step's compute
    fetch.close()
    wait_ms = 1000 * waited / steps
    return {"startup_s": round(startup, 3), "batches_per_s": round(steps / elapsed, 1),
            "ms_per_batch": round(1000 * elapsed / steps, 2), "ahead": ahead,
            "wait_ms_per_step": round(wait_ms, 2),
            "wait_share": round(wait_ms / (wait_ms + step_ms), 4),
            "peak_rss_mib": round(peak_rss_kib() / 1024, 1)}


def peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over fork and exec, so a child would report its parent's peak (the table writer's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: peak memory is read on Linux only")


def run(store, rows: int, shape, args: argparse.Namespace, steps: int | None = None) -> dict:
    bucket, latent, batch_size, dtype = shape
    version = write_table(store, rows, bucket, latent, dtype, args.rows_per_file)
    text_version = write_texts(store, rows, args.rows_per_file)
    steps = steps or args.steps
    job = {"root": store.root, "options": store.storage_options, "version": version,
           "text_version": text_version,
           "frames": bucket[0], "batch_size": batch_size, "steps": steps,
           "ahead": args.ahead, "step_ms": args.step_ms}
    child = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(job),
                           capture_output=True, text=True, check=True)
    return {"store": "s3" if store.root.startswith("s3://") else "local", "rows": rows,
            "rows_per_file": args.rows_per_file, "latent_shape": list(latent),
            "latent_dtype": dtype,
            "batch_size": batch_size, "steps": steps, **json.loads(child.stdout)}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:  # the job on stdin: the store's options hold its keys
        print(json.dumps(measure(**json.loads(sys.stdin.read()))))
        return
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--paper-rows", type=int, default=256,
                        help="rows of the paper-size table (0: none)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--store", type=Path, default=None,
                        help="a folder for the tables (default: a temporary one)")
    parser.add_argument("--s3-rows", type=int, nargs="*", default=[1000],
                        help="tiny table sizes to repeat on moto's S3 server (none: skip)")
    parser.add_argument("--ahead", type=int, default=2, help="prefetch threads")
    parser.add_argument("--rows-per-file", type=int, default=None,
                        help="rows per data file (default: Lance's, about a million)")
    parser.add_argument("--step-ms", type=float, default=120.0,
                        help="the stand-in step's duration")
    args = parser.parse_args()
    from osora.store import Store

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        root = str(args.store or tmp)
        for rows in args.rows:
            report(run(Store(f"{root}/tiny_{rows}"), rows, tiny_shape(), args))
        if args.paper_rows:
            steps = min(args.steps, args.paper_rows // paper_shape()[2] // 2 or 1)
            report(run(Store(f"{root}/paper"), args.paper_rows, paper_shape(), args, steps))
        if args.s3_rows:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from s3_server import moto_server

            with moto_server(Path(tmp) / "moto.log", "bench") as (server, _):
                for rows in args.s3_rows:
                    store = Store.from_settings(server.store_settings(f"tiny_{rows}"))
                    report(run(store, rows, tiny_shape(), args))


def report(line: dict) -> None:
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
