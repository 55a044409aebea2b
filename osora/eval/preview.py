"""Preview images of sample videos, so a person sees what the model made without decoding mp4s.

- `contact_sheet`: a PNG with one row per video: its prompt (and a note, e.g. which attributes
  it followed), then its first, middle and last frame side by side.
- `animated_preview`: a GIF tiling every video in one grid, all playing in sync, looping.

Tiny videos (the tiny profile's 64×64) are enlarged by a whole-number nearest-neighbour factor
to at least MIN_CELL_HEIGHT px, so each pixel stays a sharp square instead of a blur; large ones
are shrunk to MAX_CELL_HEIGHT. Videos of held-out prompts get an orange border and band and the
words "held-out prompt". Rows and tiles carry the same numbers, so a tile of the GIF can be
looked up on the sheet.

GIF rather than animated WebP: every browser, image viewer, chat client and GitHub's markdown
plays a GIF, while some viewers show an animated WebP as a still (WebP would be about half the
size). A GIF's few colours are plenty for a preview; one palette for all frames keeps the still
parts (text, borders) from flickering.
Text uses Pillow's built-in font (no font files from the system), which lacks ✓ and ✗: those
two are drawn as strokes.
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from osora.fileio import atomic_write_bytes
from osora.media.frames import read_video

PREVIEW_DIR = Path("reports") / "dit_sample"  # under the project root: dit_sample's previews
CONTACT_SHEET = "contact_sheet.png"
ANIMATED_PREVIEW = "preview.gif"

HELD_OUT_COLOUR = (230, 120, 0)  # orange: band, borders and tag of held-out prompts
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
MUTED = (90, 90, 90)
RULE = (215, 215, 215)
MARK_COLOURS = {"✓": (0, 140, 60), "✗": (200, 30, 30)}

MIN_CELL_HEIGHT = 128  # tiny videos are enlarged to at least this height
MAX_CELL_HEIGHT = 256  # and large ones shrunk to at most this
MIN_WIDTH = 480  # room for a title of a few words even above a single video
PAD = 12  # around text blocks and images
GAP = 8  # between frame cells, tiles and text blocks
BORDER = 4  # around each frame cell and tile; orange when held out, else background
BAND = 6  # the held-out band at a sheet row's left edge
TITLE_SIZE, TEXT_SIZE, NOTE_SIZE, SMALL_SIZE = 20, 16, 14, 12
DEFAULT_TITLE = "Sample videos"
# The GIF's one palette: 128 colours show 64x64 samples faithfully and, on noisy ones, make
# the file a quarter smaller than 256 (~2.4 MB for 30 videos of 16 frames).
PALETTE_COLOURS = 128
MAX_PALETTE_FRAMES = 16  # frames the palette is built from (spread over the video)


@dataclass(frozen=True)
class PreviewItem:
    """One sample video to preview: its file, the prompt it was made from, whether the prompt
    was held out, and a short note shown under the prompt (e.g. "colour ✓ shape ✗")."""

    video: Path
    prompt: str
    held_out: bool = False
    note: str = ""


# ------------------------------------------------------------------------------ public API


def contact_sheet(items: Sequence[PreviewItem], out_png: Path,
                  title: str = DEFAULT_TITLE) -> Path:
    """Write the contact sheet of `items` under the heading `title` to `out_png` (atomically);
    returns its path."""
    videos, scaling = _decode(items)
    return _save_png(_sheet(items, videos, title, scaling), Path(out_png))


def animated_preview(items: Sequence[PreviewItem], out_path: Path, title: str = DEFAULT_TITLE,
                     fps: float = 8.0) -> Path:
    """Write an animated GIF of every video of `items` playing in sync in one grid under the
    heading `title`, looping forever, at `fps` (GIF delays are whole hundredths of a second)
    to `out_path` (atomically); returns its path."""
    videos, scaling = _decode(items)
    return _save_gif(_grid_frames(items, videos, title, scaling, fps), Path(out_path), fps)


def write_previews(items: Sequence[PreviewItem], out_dir: Path, title: str = DEFAULT_TITLE,
                   fps: float = 8.0) -> dict[str, Path]:
    """Both previews of `items` in `out_dir` (CONTACT_SHEET, ANIMATED_PREVIEW), each video
    decoded once; returns {"contact_sheet": path, "preview": path}."""
    videos, scaling = _decode(items)
    out_dir = Path(out_dir)
    return {
        "contact_sheet": _save_png(_sheet(items, videos, title, scaling),
                                   out_dir / CONTACT_SHEET),
        "preview": _save_gif(_grid_frames(items, videos, title, scaling, fps),
                             out_dir / ANIMATED_PREVIEW, fps),
    }


def existing_previews(out_dir: Path) -> list[Path]:
    """The preview files present in `out_dir` (for `osora results`)."""
    return [p for p in (Path(out_dir) / CONTACT_SHEET, Path(out_dir) / ANIMATED_PREVIEW)
            if p.is_file()]


# ------------------------------------------------------------------------------- frames


def _decode(items: Sequence[PreviewItem]) -> tuple[list[np.ndarray], str]:
    """Each item's video at display size, (T, H', W', 3) uint8, and a note saying how the
    videos were scaled for display."""
    if not items:
        raise ValueError("no sample videos to preview")
    videos, notes = [], []
    for item in items:
        frames = read_video(item.video)  # (T, H, W, 3)
        shown = _display(frames)
        videos.append(shown)
        notes.append(_scaling_note(frames.shape, shown.shape))
    return videos, "; ".join(dict.fromkeys(notes))  # each note once, in order


def _display(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) → (T, H', W', 3) at display size: small videos enlarged by a whole number
    (nearest neighbour: np.repeat), large ones shrunk to MAX_CELL_HEIGHT."""
    height = frames.shape[1]
    if height > MAX_CELL_HEIGHT:
        return _shrink(frames, MAX_CELL_HEIGHT)
    scale = math.ceil(MIN_CELL_HEIGHT / height)
    return frames.repeat(scale, axis=1).repeat(scale, axis=2)


def _shrink(frames: np.ndarray, height: int) -> np.ndarray:
    """(T, H, W, 3) → (T, height, W·height/H, 3), area-averaged."""
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BOX))
                     for f in frames])


def _scaling_note(source: tuple[int, ...], shown: tuple[int, ...]) -> str:
    """How (T, H, W, 3) frames became (T, H', W', 3), e.g. "64x64 px videos enlarged 2x" (an
    ASCII x: the built-in font has no ×)."""
    (height, width), (shown_h, shown_w) = source[1:3], shown[1:3]
    size = f"{width}x{height} px videos"
    if shown_h > height:
        return f"{size} enlarged {shown_h // height}x (nearest neighbour)"
    if shown_h < height:
        return f"{size} shrunk to {shown_w}x{shown_h}"
    return f"{size} at their own size"


def _key_frames(frames: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The first, middle and last frame of (T, H, W, 3) frames as (index, (H, W, 3)) pairs
    (the same frame more than once when T < 3, so every row has three cells). The middle of
    an even count is the later of the two (frame 8 of 0…15)."""
    last = len(frames) - 1
    return [(i, frames[i]) for i in (0, (last + 1) // 2, last)]


def _framed(frame: np.ndarray, held_out: bool) -> Image.Image:
    """An (H, W, 3) frame inside a BORDER-wide frame: orange for a held-out prompt."""
    height, width = frame.shape[:2]
    cell = Image.new("RGB", (width + 2 * BORDER, height + 2 * BORDER),
                     HELD_OUT_COLOUR if held_out else BACKGROUND)
    cell.paste(Image.fromarray(frame), (BORDER, BORDER))
    return cell


# --------------------------------------------------------------------------------- text


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _line_height(font: ImageFont.FreeTypeFont) -> int:
    return round(font.size * 1.3)


def _segments(text: str) -> list[str]:
    """`text` cut around the marks ✓ and ✗, which are drawn rather than typed."""
    return [s for s in re.split("([✓✗])", text) if s]


def _mark_width(font: ImageFont.FreeTypeFont) -> float:
    return font.size * 0.75


def _text_width(text: str, font: ImageFont.FreeTypeFont) -> float:
    return sum(_mark_width(font) if s in MARK_COLOURS else font.getlength(s)
               for s in _segments(text))


def _draw_text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str,
               font: ImageFont.FreeTypeFont, fill: tuple[int, int, int]) -> None:
    x, y = xy
    for segment in _segments(text):
        if segment in MARK_COLOURS:
            _draw_mark(draw, (x, y), segment, font.size)
            x += _mark_width(font)
        else:
            draw.text((x, y), segment, font=font, fill=fill)
            x += font.getlength(segment)


def _draw_mark(draw: ImageDraw.ImageDraw, xy: tuple[float, float], mark: str,
               size: int) -> None:
    """✓ (green) or ✗ (red) as strokes between the x-height and the baseline of a line of
    text of `size` px drawn at `xy` (Pillow's default anchor: the top of the ascender)."""
    x, y = xy
    left, right = x + size * 0.1, x + size * 0.6
    top, bottom = y + size * 0.35, y + size * 0.95
    width = max(2, size // 7)
    fill = MARK_COLOURS[mark]
    if mark == "✓":
        draw.line([(left, (top + bottom) / 2), (left + (right - left) * 0.4, bottom),
                   (right, top)], fill=fill, width=width, joint="curve")
    else:
        draw.line([(left, top), (right, bottom)], fill=fill, width=width)
        draw.line([(left, bottom), (right, top)], fill=fill, width=width)


def _fit(text: str, font: ImageFont.FreeTypeFont, width: float) -> int:
    """How many leading characters of `text` fit in `width` px (at least one)."""
    n = len(text)
    while n > 1 and _text_width(text[:n], font) > width:
        n -= 1
    return n


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: float) -> list[str]:
    """Greedy word wrap to `width` px; a word wider than a line is cut between characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        joined = f"{line} {word}" if line else word
        if _text_width(joined, font) <= width:
            line = joined
            continue
        if line:
            lines.append(line)
        while _text_width(word, font) > width:
            cut = _fit(word, font, width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    return [*lines, line] if line else lines


def _truncate(text: str, font: ImageFont.FreeTypeFont, width: float) -> str:
    """`text` cut to fit `width` px, ending in "…" when cut."""
    if _text_width(text, font) <= width:
        return text
    return text[:_fit(text, font, width - font.getlength("…"))].rstrip() + "…"


# A block of text: (line, font, colour) per line, drawn top to bottom.
_Block = list[tuple[str, ImageFont.FreeTypeFont, tuple[int, int, int]]]


def _block(text: str, size: int, fill: tuple[int, int, int], width: float) -> _Block:
    font = _font(size)
    return [(line, font, fill) for line in _wrap(text, font, width)]


def _block_height(block: _Block) -> int:
    return sum(_line_height(font) for _, font, _ in block)


def _draw_block(draw: ImageDraw.ImageDraw, xy: tuple[int, int], block: _Block) -> int:
    """Draw `block` from `xy` down; returns the y below it."""
    x, y = xy
    for line, font, fill in block:
        _draw_text(draw, (x, y), line, font, fill)
        y += _line_height(font)
    return y


def _tag_height() -> int:
    """Of the held-out tag with the space beneath it."""
    return _line_height(_font(SMALL_SIZE)) + 6


def _held_out_tag(draw: ImageDraw.ImageDraw, xy: tuple[int, int]) -> int:
    """White "held-out prompt" on an orange label at `xy`; returns the y below it."""
    font = _font(SMALL_SIZE)
    x, y = xy
    width = font.getlength("held-out prompt") + 8
    draw.rounded_rectangle([x, y, x + width, y + _tag_height() - 4], radius=3,
                           fill=HELD_OUT_COLOUR)
    draw.text((x + 4, y + 2), "held-out prompt", font=font, fill=BACKGROUND)
    return y + _tag_height()


def _header(title: str, legend: str, width: int) -> Image.Image:
    """The title (large) and a legend line beneath it, wrapped to `width` px."""
    text_width = width - 2 * PAD
    block = _block(title, TITLE_SIZE, INK, text_width) + _block(legend, NOTE_SIZE, MUTED,
                                                                text_width)
    image = Image.new("RGB", (width, _block_height(block) + 2 * PAD), BACKGROUND)
    _draw_block(ImageDraw.Draw(image), (PAD, PAD), block)
    return image


def _legend(items: Sequence[PreviewItem], what: str, scaling: str) -> str:
    """What the picture shows, how its frames were scaled and, if any, what orange means."""
    held_out = "; orange: held-out prompt" if any(item.held_out for item in items) else ""
    return f"{what}; {scaling}{held_out}."


# ------------------------------------------------------------------------- contact sheet


def _sheet(items: Sequence[PreviewItem], videos: Sequence[np.ndarray], title: str,
           scaling: str) -> Image.Image:
    """Header, then one row per item, separated by thin rules."""
    rows = [_key_frames(video) for video in videos]
    width = max(MIN_WIDTH, max(_cells_width(cells) for cells in rows) + BAND + 2 * PAD)
    legend = _legend(items, f"{len(items)} videos, one a row: its prompt, then its first, "
                     "middle and last frame", scaling)
    parts = [_header(title, legend, width)]
    parts += [_row(n, item, cells, width) for n, (item, cells) in enumerate(zip(items, rows), 1)]
    return _stack(parts, width)


def _cells_width(cells: list[tuple[int, np.ndarray]]) -> int:
    return sum(frame.shape[1] + 2 * BORDER for _, frame in cells) + GAP * (len(cells) - 1)


def _row(number: int, item: PreviewItem, cells: list[tuple[int, np.ndarray]],
         width: int) -> Image.Image:
    """One sheet row: [held-out tag], "n. prompt" wrapped, the note, then the key frames with
    their frame numbers beneath; a held-out row has an orange band down its left edge."""
    x = BAND + PAD
    text_width = width - x - PAD
    text = _block(f"{number}. {item.prompt}", TEXT_SIZE, INK, text_width)
    if item.note:
        text += _block(item.note, NOTE_SIZE, MUTED, text_width)
    tag_height = _tag_height() if item.held_out else 0
    cell_height = max(frame.shape[0] for _, frame in cells) + 2 * BORDER
    caption_height = _line_height(_font(SMALL_SIZE))
    height = PAD + tag_height + _block_height(text) + GAP + cell_height + caption_height + PAD

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if item.held_out:
        draw.rectangle([0, 0, BAND - 1, height - 1], fill=HELD_OUT_COLOUR)
    y = _held_out_tag(draw, (x, PAD)) if item.held_out else PAD
    y = _draw_block(draw, (x, y), text) + GAP
    for (index, frame), label in zip(cells, ("first", "middle", "last")):
        cell = _framed(frame, item.held_out)
        image.paste(cell, (x, y))
        draw.text((x + BORDER, y + cell.height), f"{label}: frame {index}",
                  font=_font(SMALL_SIZE), fill=MUTED)
        x += cell.width + GAP
    return image


def _stack(parts: Sequence[Image.Image], width: int) -> Image.Image:
    """Images one under another, a 1 px rule between each two."""
    sheet = Image.new("RGB", (width, sum(p.height for p in parts) + len(parts) - 1), RULE)
    y = 0
    for part in parts:
        sheet.paste(part, (0, y))
        y += part.height + 1
    return sheet


# ------------------------------------------------------------------------ animated grid


def _grid_frames(items: Sequence[PreviewItem], videos: Sequence[np.ndarray], title: str,
                 scaling: str, fps: float) -> list[Image.Image]:
    """One RGB image per time step: a video shorter than the longest holds its last frame."""
    tile_w = max(v.shape[2] for v in videos) + 2 * BORDER
    tile_h = max(v.shape[1] for v in videos) + 2 * BORDER
    label_h = _line_height(_font(SMALL_SIZE))
    columns = math.ceil(math.sqrt(len(videos)))
    rows = math.ceil(len(videos) / columns)
    width = max(MIN_WIDTH, 2 * PAD + columns * tile_w + (columns - 1) * GAP)
    legend = _legend(items, f"{len(videos)} videos playing together at {fps:g} fps, "
                     "numbered as on the contact sheet", scaling)
    header = _header(title, legend, width)
    cell_h = label_h + tile_h + GAP
    origins = [(PAD + (n % columns) * (tile_w + GAP), header.height + (n // columns) * cell_h)
               for n in range(len(videos))]  # top-left of each tile's label

    still = Image.new("RGB", (width, header.height + rows * cell_h + PAD), BACKGROUND)
    still.paste(header, (0, 0))
    draw = ImageDraw.Draw(still)
    for n, (item, (x, y)) in enumerate(zip(items, origins), 1):
        draw.text((x, y), _truncate(f"{n}. {item.prompt}", _font(SMALL_SIZE), tile_w),
                  font=_font(SMALL_SIZE), fill=INK)

    frames = []
    for t in range(max(len(v) for v in videos)):
        frame = still.copy()
        for item, video, (x, y) in zip(items, videos, origins):
            frame.paste(_framed(video[min(t, len(video) - 1)], item.held_out), (x, y + label_h))
        frames.append(frame)
    return frames


def _palette_of(frames: Sequence[Image.Image]) -> Image.Image:
    """One PALETTE_COLOURS palette (median cut) for every frame, from up to MAX_PALETTE_FRAMES of
    them stacked: shared, so still parts keep their colour from frame to frame."""
    step = math.ceil(len(frames) / MAX_PALETTE_FRAMES)
    sample = frames[::step]
    stacked = Image.new("RGB", (sample[0].width, sample[0].height * len(sample)))
    for k, frame in enumerate(sample):
        stacked.paste(frame, (0, k * frame.height))
    return stacked.quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT)


# -------------------------------------------------------------------------------- files


def _save_png(image: Image.Image, path: Path) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # optimize=True: 4 s more for 10% smaller
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _save_gif(frames: Sequence[Image.Image], path: Path, fps: float) -> Path:
    """An endlessly looping GIF; no dithering: its noise would crawl from frame to frame and
    defeat GIF's compression. Pillow merges a frame identical to the one before into it (one
    frame shown twice as long), so a still video makes fewer GIF frames, timing unchanged."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    palette = _palette_of(frames)
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buffer = io.BytesIO()
    indexed[0].save(buffer, format="GIF", save_all=True, append_images=indexed[1:],
                    duration=round(1000 / fps), loop=0)
    atomic_write_bytes(path, buffer.getvalue())
    return path
