"""Data statistics of the paper's Figures 3 and 4: histograms of aesthetic score, duration,
aspect ratio (h/w) and caption length, and a word cloud of the captions.

Each histogram is written twice: a PNG for people and MLflow, and a CSV (bin, count) that
`dvc plots` draws. A score that was not evaluated gets no histogram, only a note.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from osora.fileio import atomic_write_bytes


@dataclass(frozen=True)
class Histogram:
    name: str  # file stem, e.g. "duration"
    title: str
    xlabel: str
    values: np.ndarray  # (N,) float64, missing values removed


def histograms(level: pa.Table) -> tuple[list[Histogram], list[str]]:
    """The four histograms of a pyramid level, and notes on those that cannot be drawn."""

    def column(name: str) -> np.ndarray:
        values = level.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        return values[~np.isnan(values)]

    height, width = column("height"), column("width")
    captions = [c for c in level.column("caption").to_pylist() if c]
    candidates = [
        Histogram("aesthetic", "Aesthetic score", "score", column("aesthetic")),
        Histogram("duration", "Clip duration", "seconds", column("duration_s")),
        Histogram("aspect_ratio", "Aspect ratio", "height / width", height / width),
        Histogram("caption_words", "Caption length", "words",
                  np.array([len(c.split()) for c in captions], dtype=np.float64)),
    ]
    notes = [f"{h.name}: no values (not evaluated or no clips), no histogram"
             for h in candidates if h.values.size == 0]
    return [h for h in candidates if h.values.size], notes


def write_histogram(h: Histogram, bins: int, out_dir: Path) -> list[Path]:
    """<name>.csv (bin centre, count) and <name>.png; returns both paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    counts, edges = np.histogram(h.values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    csv_path = out_dir / f"{h.name}.csv"
    lines = [["bin", "count"], *([f"{c:.6g}", int(n)] for c, n in zip(centres, counts))]
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(lines)

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.bar(centres, counts, width=np.diff(edges), edgecolor="white", color="#4c72b0")
    ax.set(title=f"{h.title} (n={h.values.size})", xlabel=h.xlabel, ylabel="clips")
    fig.tight_layout()
    png_path = out_dir / f"{h.name}.png"
    fig.savefig(png_path)
    plt.close(fig)
    return [csv_path, png_path]


def write_word_cloud(captions: list[str], out_dir: Path, seed: int = 0) -> Path | None:
    """word_cloud.png of the captions (None when there are none)."""
    text = " ".join(c for c in captions if c)
    if not text.strip():
        return None
    from wordcloud import WordCloud

    cloud = WordCloud(width=800, height=400, background_color="white", random_state=seed)
    image = cloud.generate(text).to_image()
    path = out_dir / "word_cloud.png"
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
