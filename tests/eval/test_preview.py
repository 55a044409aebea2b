"""Preview images of sample videos, checked against the videos themselves: tiny mp4s of known
content (frame t of video i: a solid colour of its own with a black 2x2 dot that moves with t),
encoded losslessly (CRF 0), decoded independently with PyAV, and found in the PNG and the GIF
by their colours, not by the module's layout."""

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from osora.cli import main
from osora.eval.preview import (
    HELD_OUT_COLOUR,
    MAX_CELL_HEIGHT,
    PreviewItem,
    animated_preview,
    contact_sheet,
    write_previews,
)
from osora.media.ffmpeg import encode_frames

REPO = Path(__file__).resolve().parents[2]
SIDE = 64  # px, as the tiny profile's samples
LENGTHS = (9, 9, 5)  # frames of each video: odd, so the middle frame is unambiguous
GREENS = (0, 60, 200)  # one per video: no video's colour comes near another's or a grey
TOLERANCE = 10  # per channel: H.264's RGB→YUV→RGB round trip, the GIF's palette


def colour(video: int, t: int) -> tuple[int, int, int]:
    """Saturated, 25 apart from frame to frame, far from text greys and the held-out orange."""
    return (20 + 25 * t, GREENS[video], 230 - 25 * t)


def frame(video: int, t: int) -> np.ndarray:
    image = np.empty((SIDE, SIDE, 3), np.uint8)  # (H, W, 3)
    image[:] = colour(video, t)
    y, x = 20, 8 + 4 * t  # even: yuv420p keeps a 2x2 dot on even coordinates whole
    image[y:y + 2, x:x + 2] = 0
    return image


def decode(path: Path) -> np.ndarray:
    """The reference: every frame by PyAV directly, (T, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[PreviewItem]:
    """Three sample videos; the second one's prompt is held out."""
    folder = tmp_path_factory.mktemp("samples")
    prompts = ("a red square moving left", "a blue circle moving up", "a green square")
    made = []
    for i, (prompt, length) in enumerate(zip(prompts, LENGTHS)):
        video = encode_frames([frame(i, t) for t in range(length)], folder / f"{prompt}-0.mp4",
                              8, crf=0)
        made.append(PreviewItem(video, prompt, held_out=i == 1,
                                note="colour ✓ shape ✗ direction ✓" if i == 0 else ""))
    return made


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)  # (H, W, 3)


def find(image: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the block of `image` (H, W, 3) in colour `target`, or None.
    Only rows and columns with ≥ 32 such pixels count, so antialiased text never does."""
    mask = (np.abs(image - target) <= TOLERANCE).all(axis=-1)  # (H, W)
    rows, cols = np.flatnonzero(mask.sum(1) >= 32), np.flatnonzero(mask.sum(0) >= 32)
    if not len(rows) or not len(cols):
        return None
    return rows[0], cols[0], rows[-1] + 1, cols[-1] + 1


def enlarged(decoded: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, 3) → (H·scale, W·scale, 3), each pixel a scale x scale square: the reference for
    nearest-neighbour enlargement."""
    return np.kron(decoded.astype(int), np.ones((scale, scale, 1), int))


def orange_pixels(image: np.ndarray) -> int:
    return int((np.abs(image - HELD_OUT_COLOUR) <= TOLERANCE).all(axis=-1).sum())


def test_contact_sheet_rows_hold_the_first_middle_and_last_frame_pixel_for_pixel(items, tmp_path):
    sheet = rgb(contact_sheet(items, tmp_path / "sheet.png", title="dit_sample: eval prompts"))
    boxes = []
    for item in items:
        reference = decode(item.video)  # (T, H, W, 3)
        last = len(reference) - 1
        row = []
        for t in (0, last // 2, last):
            box = find(sheet, reference[t, 0, 0])
            assert box is not None, (item.prompt, t)
            top, left, bottom, right = box
            # a 64x64 video is shown 2x, each source pixel a 2x2 square, the frame exact
            assert (bottom - top, right - left) == (2 * SIDE, 2 * SIDE), (item.prompt, t)
            np.testing.assert_array_equal(sheet[top:bottom, left:right],
                                          enlarged(reference[t], 2))
            row.append(box)
        # first, middle, last from left to right on one line
        assert [b[0] for b in row] == [row[0][0]] * 3
        assert row[0][1] < row[1][1] < row[2][1]
        # no other frame is on the sheet
        for t in set(range(len(reference))) - {0, last // 2, last}:
            assert find(sheet, reference[t, 0, 0]) is None, (item.prompt, t)
        boxes.append(row[0])
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # rows in the items' order

    # One run of frame cells down the sheet per item: rows = items.
    first_column = sheet[:, (boxes[0][1] + boxes[0][3]) // 2]  # (H, 3)
    colourful = (first_column.max(axis=1) - first_column.min(axis=1)) > 60  # not grey/white
    edges = np.flatnonzero(np.diff(np.concatenate([[0], colourful.astype(int), [0]])))
    lengths = edges[1::2] - edges[::2]  # of each run of colourful pixels
    assert (lengths >= 100).sum() == len(items), lengths  # text and borders are far shorter

    # Only the held-out row carries the orange marker (band, borders, tag): a row's strip from
    # its prompt's line down to below its cells' border.
    oranges = [orange_pixels(sheet[top - 30:bottom + 4]) for top, _, bottom, _ in boxes]
    assert oranges[1] > 2 * 3 * 2 * SIDE * 4, oranges  # more than the three cells' borders
    assert oranges[0] == oranges[2] == 0, oranges


def test_a_long_prompt_wraps_within_the_sheet(items, tmp_path):
    short = Image.open(contact_sheet(items[:1], tmp_path / "short.png", "t"))
    long = PreviewItem(items[0].video, " ".join(["a red square moving left"] * 20) + " x" * 80)
    wrapped = Image.open(contact_sheet([long], tmp_path / "long.png", "t"))
    assert wrapped.width == short.width
    assert wrapped.height > short.height + 100  # many more lines of text


def test_a_large_video_is_shrunk_to_fit(tmp_path):
    big = np.zeros((3, 400, 600, 3), np.uint8)  # (T, H, W, 3)
    big[:] = np.array([colour(0, t) for t in range(3)], np.uint8)[:, None, None]
    video = encode_frames(list(big), tmp_path / "big.mp4", 8, crf=0)
    sheet = rgb(contact_sheet([PreviewItem(video, "a wide red frame")], tmp_path / "big.png"))
    top, left, bottom, right = find(sheet, decode(video)[0, 0, 0])
    assert (bottom - top, right - left) == (MAX_CELL_HEIGHT, MAX_CELL_HEIGHT * 3 // 2)


def test_gif_plays_every_video_in_sync_looping(items, tmp_path):
    gif_path = animated_preview(items, tmp_path / "preview.gif", title="samples", fps=10)
    gif = Image.open(gif_path)
    assert gif.format == "GIF"
    assert gif.n_frames == max(LENGTHS)
    assert gif.info["loop"] == 0  # forever
    references = [decode(item.video) for item in items]
    places: dict[int, tuple[int, int, int, int]] = {}
    for t in range(gif.n_frames):
        gif.seek(t)
        assert gif.info["duration"] == 100
        image = np.asarray(gif.convert("RGB")).astype(int)  # (H, W, 3)
        for i, (item, reference) in enumerate(zip(items, references)):
            shown = reference[min(t, len(reference) - 1)]  # a short video holds its last frame
            box = find(image, shown[0, 0])
            assert box is not None, (item.prompt, t)
            top, left, bottom, right = box
            assert (bottom - top, right - left) == (2 * SIDE, 2 * SIDE)
            assert places.setdefault(i, box) == box  # each video keeps its tile
            tile = image[top:bottom, left:right]
            assert np.abs(tile - enlarged(shown, 2)).mean() < 2  # palette-close, dot in place
            ring = orange_pixels(image[top - 4:bottom + 4, left - 4:right + 4])
            assert (ring > 0) == item.held_out, (item.prompt, ring)
    assert len(set(places.values())) == len(items)  # tiles apart


def test_write_previews_names_both_files(items, tmp_path):
    written = write_previews(items, tmp_path / "reports", "samples")
    assert written == {"contact_sheet": tmp_path / "reports" / "contact_sheet.png",
                       "preview": tmp_path / "reports" / "preview.gif"}
    assert Image.open(written["contact_sheet"]).format == "PNG"
    assert Image.open(written["preview"]).n_frames == max(LENGTHS)
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "contact_sheet.png", "preview.gif"]  # no temporary file left behind


def test_no_items_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no sample videos"):
        contact_sheet([], tmp_path / "sheet.png")


def test_results_ends_by_naming_the_previews(items, tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "params", tmp_path / "params")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    monkeypatch.chdir(tmp_path)
    for var in ("DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)

    assert main(["results"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert "reports/dit_sample" in last and "after `dvc repro dit_sample`" in last

    write_previews(items, tmp_path / "reports" / "dit_sample", "samples")
    assert main(["results"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == ("Look at the samples: reports/dit_sample/contact_sheet.png, "
                    "reports/dit_sample/preview.gif")
