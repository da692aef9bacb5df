"""The scan stage over a generated corpus of odd and hostile files (tests/corpus/make_images.py):
every file ends accepted, ignored or quarantined with a specific reason that names the fix;
nothing crashes, hangs (FIFOs, /dev/zero) or is silently wrong."""

from __future__ import annotations

import contextlib
import signal
import unicodedata

import numpy as np
import pytest
from PIL import Image

from coldstart.tasks.config import ScanConfig
from coldstart.tasks.imagefiles import ImageDecodeError, load_rgb
from coldstart.tasks.manifest import read_manifest
from coldstart.tasks.scan import scan
from coldstart.tasks.workspace import Workspace, read_csv
from tests.corpus.make_images import make_image_corpus

FIXES = ("rename", "convert", "remove", "replace", "re-export", "copy", "downscale", "crop", "recompress", "move",
         "restore", "check")


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def on_alarm(*_):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def outcomes(ws: Workspace) -> dict[str, str]:
    """Path -> "accepted" (in the manifest) or the quarantine reason."""
    got = {m["path"]: "accepted" for m in read_manifest(ws)}
    for q in read_csv(ws.quarantine):
        assert q["path"] not in got, f"{q['path']!a} is both accepted and quarantined"
        got[q["path"]] = q["reason"]
    return got


def check(expected: dict[str, str], got: dict[str, str]) -> None:
    wrong = []
    for rel, want in expected.items():
        have = got.get(rel)
        if want == "ignored":
            ok = have is None
        elif want == "accepted":
            ok = have == "accepted"
        else:
            keyword = want.split(":", 1)[1]
            ok = have not in (None, "accepted") and keyword.lower() in have.lower() \
                and any(fix in have for fix in FIXES)
        if not ok:
            wrong.append(f"{rel!a}: expected {want}, got {have}")
    extra = sorted(set(got) - set(expected))
    assert not wrong and not extra, "\n".join(wrong + [f"unexpected {e!a}: {got[e]}" for e in extra])


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    ws = Workspace(tmp_path)
    expected = make_image_corpus(ws.images, outside=tmp_path / "elsewhere")
    return ws, expected


def test_corpus_has_every_category(corpus):
    _, expected = corpus
    assert len(expected) >= 100
    kinds = {v.split(":")[0] for v in expected.values()}
    assert kinds == {"accepted", "quarantined", "ignored"}
    assert sum(v.startswith("quarantined") for v in expected.values()) >= 50


def test_scan_gives_every_corpus_file_its_outcome(corpus, monkeypatch):
    ws, expected = corpus
    # Pillow's own bomb limit (89.5 Mpx by default) lowered below the 3 Mpx image the corpus
    # holds: scan.max_pixels alone decides, and Pillow's global is left as it was.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    with deadline(120):
        r = scan(ws, ScanConfig(), round_no=1)
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    got = outcomes(ws)
    check(expected, got)
    accepted = [p for p, v in expected.items() if v == "accepted"]
    quarantined = [p for p, v in expected.items() if v.startswith("quarantined")]
    assert (r.files, r.quarantined) == (len(accepted) + len(quarantined), len(quarantined))
    # Duplicates share one id: 5 names for one content (4 byte copies + the link inside the root).
    rows = {m["path"]: m for m in read_manifest(ws)}
    dup_ids = {rows[p]["image_id"] for p in ("dups/original.png", "dups/copy of original.png",
                                             "dups/other-folder/original.png", "dups/renamed.jpg")}
    assert len(dup_ids) == 1 and rows["special/link-inside.png"]["image_id"] == rows["modes/rgb.png"]["image_id"]
    # EXIF orientations 5-8 swap width and height (24x12 stored).
    assert [(rows[f"exif/orientation-{o}.jpg"]["width"], rows[f"exif/orientation-{o}.jpg"]["height"])
            for o in range(1, 9)] == [(24, 12)] * 4 + [(12, 24)] * 4
    # Names are kept exactly as on disk: NFD names, and NFC/NFD twins as two rows.
    nfc, nfd = "names/twin-" + unicodedata.normalize("NFC", "é") + ".png", \
        "names/twin-" + unicodedata.normalize("NFD", "é") + ".png"
    assert nfc in rows and nfd in rows and rows[nfc]["image_id"] != rows[nfd]["image_id"]
    assert unicodedata.normalize("NFD", "nfd-folder-é") + "/inside.png" in rows
    # The quarantine list is one line per file (no raw CR/LF in names) and valid UTF-8.
    text = ws.quarantine.read_bytes().decode("utf-8")
    assert len(text.splitlines()) == 1 + len(quarantined)

    # A second scan reads nothing new and reaches the same verdicts; nothing blocks it.
    with deadline(120):
        r2 = scan(ws, ScanConfig(), round_no=2)
    assert (r2.new_images, r2.quarantined, r2.changed) == (0, len(quarantined), False)
    assert outcomes(ws) == got


def test_caps_apply_to_known_files_and_quarantine_lifts_when_a_setting_allows(corpus):
    ws, _ = corpus
    scan(ws, ScanConfig(), round_no=1)
    # Tighter caps reach files already in the manifest (from its width/height, no decode) ...
    scan(ws, ScanConfig(max_aspect_ratio=5), round_no=2)
    assert "scan.max_aspect_ratio=5" in outcomes(ws)["geometry/panorama-8x1.jpg"]
    # ... and a wider one lets quarantined files in again: a verdict from a setting is rechecked.
    scan(ws, ScanConfig(max_aspect_ratio=25), round_no=3)
    got = outcomes(ws)
    assert got["geometry/panorama-8x1.jpg"] == "accepted" and got["geometry/21x1.png"] == "accepted"
    scan(ws, ScanConfig(formats=["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "ICO"]), round_no=4)
    assert outcomes(ws)["formats/icon.ico"] == "accepted"


def test_formats_setting_refuses_ghostscript_formats():
    from pydantic import ValidationError

    for bad in (["EPS"], ["PNG", "pdf"], ["NOPE"], []):
        with pytest.raises(ValidationError):
            ScanConfig(formats=bad)
    assert ScanConfig(formats=["png", " jpeg "]).formats == ["PNG", "JPEG"]


def test_every_reader_goes_through_the_guard(corpus):
    """The embed stage decodes with load_rgb and the scan's caps: a file swapped after the scan
    for a FIFO, a bomb or a strip is refused there too, without blocking."""
    from coldstart.tasks.embed import ImageFiles

    ws, _ = corpus
    paths = [str(ws.images / p) for p in ("special/pipe.jpg", "geometry/20000x1.png",
                                          "geometry/bomb-header-100000x100000.png", "modes/rgb.png")]
    files = ImageFiles(paths, lambda im: __import__("torch").zeros(3, 4, 4), 4, limits=ScanConfig())
    with deadline(60):
        items = [files[i] for i in range(len(paths))]
    errors = [e for *_, e in items]
    assert "FIFO" in errors[0] and "aspect ratio" in errors[1] and "scan.max_pixels" in errors[2]
    assert errors[3] is None
    with pytest.raises(ImageDecodeError, match="max_file_mb"), deadline(30):
        load_rgb(ws.images / "size/sparse-300MB.jpg")


def test_pillow_limit_does_not_override_scan_max_pixels(tmp_path):
    """A legitimate image over Pillow's 89.5 Mpx default (here: Pillow's limit lowered to 1 Mpx,
    an image of 2.5 Mpx, over twice it) is accepted under scan.max_pixels, refused over it."""
    Image.new("L", (2500, 1000), 7).save(tmp_path / "big.png")
    saved = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = 1_000_000
        img = load_rgb(tmp_path / "big.png", ScanConfig(max_pixels=3_000_000, max_aspect_ratio=3))
        assert img.size == (2500, 1000) and np.asarray(img)[0, 0].tolist() == [7, 7, 7]
        with pytest.raises(ImageDecodeError, match="scan.max_pixels=2000000"):
            load_rgb(tmp_path / "big.png", ScanConfig(max_pixels=2_000_000))
        assert Image.MAX_IMAGE_PIXELS == 1_000_000
    finally:
        Image.MAX_IMAGE_PIXELS = saved
