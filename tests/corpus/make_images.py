"""A corpus of odd and hostile image files, generated (no binary blobs in git).

``make_image_corpus(dest)`` writes it and returns {relative path: expected outcome}, the outcome
being "accepted", "ignored" (hidden files, skipped by design) or "quarantined:<keyword>" where
the keyword must appear in the quarantine reason. Paths that are not valid UTF-8 or hold control
characters are given as the scan shows them (``coldstart.tasks.scan.shown_name``).
Expectations hold for the default ``scan`` params. Run as a script to write it somewhere:

    python tests/corpus/make_images.py /tmp/corpus
"""

from __future__ import annotations

import io
import os
import socket
import struct
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _png(size=(16, 12), mode="RGB", seed=0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode in ("L", "1", "P", "I;16") else (size[1], size[0], len(mode))
    arr = (rng.random(shape) * 255).astype(np.uint8)
    img = Image.fromarray(arr, "L").convert(mode) if mode in ("1", "P") else Image.fromarray(arr, mode)
    return _save(img, "PNG", **save)


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(size=(16, 12), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


def _chunk(kind: bytes, body: bytes, crc: int | None = None) -> bytes:
    c = zlib.crc32(kind + body) if crc is None else crc
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", c & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h (8-bit gray) with a tiny IDAT: a bomb's shape, cheaply."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _chunk(b"IEND", b"")


def _with_bad_crc(data: bytes, kind: bytes) -> bytes:
    i = data.index(kind)
    length = struct.unpack(">I", data[i - 4 : i])[0]
    end = i + 4 + length
    return data[:end] + bytes(b ^ 0xFF for b in data[end : end + 4]) + data[end + 4 :]


def _jpeg_with_size(w: int, h: int) -> bytes:
    """A small JPEG whose SOF0 header is patched to claim w x h."""
    data = bytearray(_save(_rgb((8, 8)), "JPEG"))
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _exif_jpeg(orientation: int, seed: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(_rgb((24, 12), seed), "JPEG", exif=exif)


def _corrupt_exif_jpeg() -> bytes:
    data = _save(_rgb((16, 16), 7), "JPEG")
    junk = b"Exif\x00\x00" + b"MM\x00*\x00\x00\x00\x08" + b"\xff" * 40  # IFD count 0xffff, nothing behind
    app1 = b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk
    return data[:2] + app1 + data[2:]


def _tiff_frames(n: int) -> bytes:
    frames = [_rgb((10, 8), s) for s in range(n)]
    return _save(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _animated_gif() -> bytes:
    frames = [_rgb((10, 8), s).convert("P") for s in range(3)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def make_image_corpus(dest: Path, outside: Path | None = None, *, non_utf8: bool = True,
                      special: bool = True) -> dict[str, str]:
    """Write the corpus under ``dest`` (created; becomes an image root) and return
    {relative path as the scan reports it: expected outcome}. ``outside``: a folder out of the
    image root for the target of links that lead out of it (default: ``dest``'s parent).
    ``non_utf8``: include the file and folder names that are not valid UTF-8; ``special``: the
    FIFOs, socket and symbolic links."""
    from coldstart.tasks.imagefiles import shown_name  # the display form of odd names

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(rel: str, data: bytes, outcome: str) -> None:
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[rel] = outcome

    ok = "accepted"

    # --- 1. Formats and modes Pillow reads: all normalised to 8-bit RGB ---------------------
    put("modes/rgb.png", _png(), ok)
    put("modes/rgb.jpg", _save(_rgb(seed=1), "JPEG"), ok)
    put("modes/gray-L.png", _png(mode="L", seed=2), ok)
    put("modes/1-bit.png", _png(mode="1", seed=3), ok)
    put("modes/1-bit-g4.tif", _save(Image.fromarray(np.eye(16, dtype=bool)), "TIFF", compression="group4"), ok)
    put("modes/palette.png", _png(mode="P", seed=4), ok)
    put("modes/palette-transparent.png", _save(_rgb(seed=5).convert("P"), "PNG", transparency=0), ok)
    put("modes/palette-transparent.gif", _save(_rgb(seed=6).convert("P"), "GIF", transparency=3), ok)
    put("modes/rgba.png", _png(mode="RGBA", seed=7), ok)
    put("modes/la.png", _save(Image.merge("LA", [Image.new("L", (9, 9), 90), Image.new("L", (9, 9), 0)]), "PNG"), ok)
    g16 = Image.fromarray(np.arange(16 * 12, dtype=np.uint16).reshape(12, 16) * 300)
    put("modes/gray-16bit.png", _save(g16, "PNG"), ok)
    put("modes/gray-16bit.tif", _save(g16, "TIFF"), ok)
    put("modes/int32.tif", _save(Image.fromarray(np.arange(64, dtype=np.int32).reshape(8, 8) * 1000, "I"), "TIFF"),
        ok)
    put("modes/float.tif", _save(Image.fromarray(np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "F"),
                                 "TIFF"), ok)
    put("modes/cmyk.jpg", _save(Image.new("CMYK", (12, 12), (0, 255, 255, 0)), "JPEG"), ok)
    put("modes/cmyk.tif", _save(Image.new("CMYK", (12, 12), (255, 0, 255, 0)), "TIFF"), ok)
    put("modes/ycbcr.tif", _save(_rgb(seed=8).convert("YCbCr"), "TIFF"), ok)
    put("modes/lab.tif", _save(Image.new("LAB", (8, 8), (50, 120, 130)), "TIFF"), ok)
    put("modes/progressive.jpg", _save(_rgb((32, 32), 9), "JPEG", progressive=True), ok)
    put("modes/lzw.tif", _save(_rgb(seed=10), "TIFF", compression="tiff_lzw"), ok)
    put("modes/image.bmp", _save(_rgb(seed=11), "BMP"), ok)
    put("modes/image.webp", _save(_rgb(seed=12), "WEBP"), ok)
    put("modes/lossless.webp", _save(_rgb(seed=13), "WEBP", lossless=True), ok)
    put("modes/animated.gif", _animated_gif(), ok)
    put("modes/multi-frame.tif", _tiff_frames(3), ok)
    put("modes/multi-picture.mpo", _save(_rgb(seed=14), "MPO", save_all=True, append_images=[_rgb(seed=15)]), ok)
    put("modes/png-named.jpg", _png(seed=16), ok)  # the content decides, not the extension
    put("modes/jpeg-named.txt", _save(_rgb(seed=17), "JPEG"), ok)
    put("modes/no-extension", _png(seed=18), ok)

    # --- 2. EXIF ------------------------------------------------------------------------------
    for o in range(1, 9):
        put(f"exif/orientation-{o}.jpg", _exif_jpeg(o, 20 + o), ok)
    put("exif/orientation-invalid-9.jpg", _exif_jpeg(9, 30), ok)
    put("exif/corrupt-exif.jpg", _corrupt_exif_jpeg(), ok)
    png_exif = Image.Exif()
    png_exif[0x0112] = 6
    put("exif/png-exif-chunk.png", _save(_rgb((20, 10), 31), "PNG", exif=png_exif), ok)

    # --- 3. Geometry: tiny, thin, huge-but-legal, bombs -------------------------------------
    put("geometry/1x1.png", _png((1, 1), seed=40), ok)
    put("geometry/2x1.png", _png((2, 1), seed=41), ok)
    put("geometry/20x1-at-cap.png", _png((20, 1), seed=42), ok)
    put("geometry/1x20-at-cap.png", _png((1, 20), seed=43), ok)
    put("geometry/21x1.png", _png((21, 1), seed=44), "quarantined:aspect ratio")
    put("geometry/20000x1.png", _save(Image.new("L", (20000, 1)), "PNG"), "quarantined:aspect ratio")
    put("geometry/1x20000.png", _save(Image.new("L", (1, 20000)), "PNG"), "quarantined:aspect ratio")
    put("geometry/3000x40.jpg", _save(Image.new("RGB", (3000, 40)), "JPEG"), "quarantined:aspect ratio")
    put("geometry/panorama-8x1.jpg", _save(Image.new("RGB", (400, 50), (9, 99, 199)), "JPEG"), ok)
    # Over Pillow's own MAX_IMAGE_PIXELS when a test lowers it; scan.max_pixels is the one cap.
    put("geometry/large-2000x1500.png", _save(Image.new("L", (2000, 1500), 128), "PNG"), ok)
    put("geometry/bomb-header-100000x100000.png", _png_header_only(100_000, 100_000), "quarantined:scan.max_pixels")
    put("geometry/bomb-header-12000x9000.png", _png_header_only(12_000, 9_000), "quarantined:scan.max_pixels")
    put("geometry/bomb-header-60000x60000.jpg", _jpeg_with_size(60_000, 60_000), "quarantined:scan.max_pixels")
    gif = bytearray(_save(Image.new("P", (4, 4)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    put("geometry/bomb-header-65535x65535.gif", bytes(gif), "quarantined:scan.max_pixels")

    # --- 4. Truncated and corrupt data ------------------------------------------------------
    jpg = _save(_rgb((64, 64), 50), "JPEG")
    png = _png((64, 64), seed=51)
    put("corrupt/truncated-half.jpg", jpg[: len(jpg) // 2], "quarantined:truncated")
    put("corrupt/truncated-header.jpg", jpg[:40], "quarantined:truncated")
    put("corrupt/jpeg-magic-only.jpg", b"\xff\xd8\xff", "quarantined:corrupt JPEG")
    put("corrupt/truncated-half.png", png[: len(png) // 2], "quarantined:truncated")
    put("corrupt/png-signature-only.png", png[:8], "quarantined:corrupt PNG")
    put("corrupt/png-bad-crc-ihdr.png", _with_bad_crc(png, b"IHDR"), "quarantined:bad CRC")
    # Pillow does not check IDAT CRCs; zlib's own checksum proves the pixels intact: accepted.
    put("corrupt/png-bad-crc-idat-only.png", _with_bad_crc(png, b"IDAT"), ok)
    i = png.index(b"IDAT") + 40
    put("corrupt/png-damaged-idat-data.png", png[:i] + bytes(b ^ 0x5A for b in png[i : i + 64]) + png[i + 64 :],
        "quarantined:corrupt PNG")
    gif_bytes = _save(_rgb((32, 32), 52).convert("P"), "GIF")
    put("corrupt/truncated.gif", gif_bytes[: len(gif_bytes) // 2], "quarantined:truncated")
    tif = _save(_rgb((32, 32), 53), "TIFF")
    put("corrupt/truncated.tif", tif[: len(tif) // 2], "quarantined:truncated")
    webp = _save(_rgb((32, 32), 54), "WEBP")
    put("corrupt/truncated.webp", webp[: len(webp) // 2], "quarantined:corrupt")
    bmp = _save(_rgb((32, 32), 55), "BMP")
    put("corrupt/truncated.bmp", bmp[: len(bmp) // 2], "quarantined:truncated")
    put("corrupt/zero-bytes.jpg", b"", "quarantined:empty file")
    put("corrupt/zero-bytes.png", b"", "quarantined:empty file")
    put("corrupt/one-byte.jpg", b"\xff", "quarantined:not an image")
    put("corrupt/random-bytes.jpg", np.random.default_rng(56).bytes(2048), "quarantined:not an image")

    # --- 5. Not images, or formats not accepted -----------------------------------------------
    put("formats/page-saved-as.jpg", b"<!DOCTYPE html><html><body>Access denied</body></html>\n",
        "quarantined:HTML page")
    put("formats/notes.png", b"just some notes\n", "quarantined:holds text")
    put("formats/document.pdf", _save(_rgb(seed=60), "PDF"), "quarantined:format PDF is not accepted")
    put("formats/pdf-renamed.jpg", _save(_rgb(seed=61), "PDF"), "quarantined:format PDF is not accepted")
    put("formats/figure.eps", _save(_rgb(seed=62), "EPS"), "quarantined:format EPS is not accepted")
    put("formats/postscript.jpg", b"%!PS\n/Helvetica findfont 12 scalefont setfont\nshowpage\n",
        "quarantined:format PS is not accepted")
    put("formats/iphone-renamed.jpg", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
        "quarantined:format HEIC is not accepted")
    put("formats/photo.heic", b"\x00\x00\x00\x18ftypheix\x00\x00\x00\x00mif1heix" + b"\0" * 64,
        "quarantined:format HEIC is not accepted")
    put("formats/photo.avif", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\0" * 64,
        "quarantined:format AVIF is not accepted")
    put("formats/icon.ico", _save(_rgb((16, 16), 63), "ICO"), "quarantined:format ICO is not accepted")
    put("formats/image.jp2", _save(_rgb(seed=64), "JPEG2000"), "quarantined:format JPEG2000 is not accepted")
    put("formats/image.ppm", _save(_rgb(seed=65), "PPM"), "quarantined:format PPM is not accepted")
    put("formats/image.qoi", _save(_rgb(seed=66), "QOI"), "quarantined:format QOI is not accepted")
    put("formats/image.tga", _save(_rgb(seed=67), "TGA"), "quarantined:not an image")
    put("formats/image.pcx", _save(_rgb(seed=68), "PCX"), "quarantined:not an image")
    put("formats/layers.psd", b"8BPS\x00\x01" + b"\0" * 64, "quarantined:format PSD is not accepted")
    put("formats/image.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>\n',
        "quarantined:holds text")
    put("formats/archive.zip", b"PK\x03\x04" + b"\0" * 64, "quarantined:format ZIP archive")
    put("formats/tarball.jpg.gz", b"\x1f\x8b\x08" + b"\0" * 32,
        "quarantined:format gzip archive")

    # --- 6. Files too large to read (sparse: no disk used) -----------------------------------
    big = dest / "size" / "sparse-300MB.jpg"
    big.parent.mkdir(parents=True, exist_ok=True)
    with open(big, "wb") as f:
        f.write(_save(_rgb(seed=70), "JPEG"))
        f.truncate(300 << 20)
    expect["size/sparse-300MB.jpg"] = "quarantined:scan.max_file_mb"

    # --- 7. Duplicates under other names --------------------------------------------------------
    original = _save(_rgb((20, 20), 80), "PNG")
    put("dups/original.png", original, ok)
    put("dups/copy of original.png", original, ok)
    put("dups/other-folder/original.png", original, ok)
    put("dups/renamed.jpg", original, ok)
    put("dups/same pixels re-encoded.png", _save(Image.open(io.BytesIO(original)), "PNG", compress_level=1), ok)

    # --- 8. Names ------------------------------------------------------------------------------
    name_ok = {"names/中文 样本.png": 90, "names/émoji 🐱.png": 91, "names/with space.png": 92,
               "names/-leading-dash.png": 93, "names/quote'\"mark.png": 94, "names/comma,semicolon;.png": 95,
               "names/=cmd|' -c calc'!A1.png": 96, "names/" + "x" * 240 + ".png": 97,
               "names/ä-nfd-only-" + unicodedata.normalize("NFD", "café") + ".png": 98,
               "names/" + unicodedata.normalize("NFD", "Ørsted-日本-é") + ".png": 99}
    for rel, seed in name_ok.items():
        put(rel, _png(seed=seed), ok)
    # NFC and NFD twins: two different files on Linux, both kept exactly as they are.
    put("names/twin-" + unicodedata.normalize("NFC", "é") + ".png", _png(seed=100), ok)
    put("names/twin-" + unicodedata.normalize("NFD", "é") + ".png", _png(seed=101), ok)
    put(unicodedata.normalize("NFD", "nfd-folder-é") + "/inside.png", _png(seed=102), ok)
    controls = {"cr": "\r", "lf": "\n", "tab": "\t", "soh": "\x01", "esc": "\x1b", "del": "\x7f", "nel": "\x85",
                "linesep": "\u2028"}
    for i, (label, c) in enumerate(controls.items()):
        rel = f"names/{label}{c}name.png"
        put(rel, _png(seed=110 + i), "quarantined:control character")
        expect[shown_name(rel)] = expect.pop(rel)
    put("names/ctrl\rfolder/inside.png", _png(seed=120), "quarantined:control character")
    expect[shown_name("names/ctrl\rfolder/inside.png")] = expect.pop("names/ctrl\rfolder/inside.png")
    for i, raw in enumerate((b"latin1-caf\xe9.png", b"invalid-\xff\xfe.png", b"cut-utf8-\xe4\xb8.png")[: 3 * non_utf8]):
        path = os.fsencode(dest / "names") + b"/" + raw
        with open(path, "wb") as f:
            f.write(_png(seed=130 + i))
        expect[shown_name("names/" + os.fsdecode(raw))] = "quarantined:not valid UTF-8"
    if non_utf8:
        folder = os.fsencode(dest) + b"/names-\xe9"
        os.makedirs(folder, exist_ok=True)
        with open(folder + b"/fine.png", "wb") as f:
            f.write(_png(seed=140))
        expect[shown_name(os.fsdecode(b"names-\xe9/fine.png"))] = "quarantined:not valid UTF-8"

    # --- 9. Special files and links ------------------------------------------------------------
    if special:
        _special_files(dest, outside, expect)

    # --- 10. Hidden files: skipped by design (macOS and editor droppings) -------------------
    put(".DS_Store", b"\0\0\0\1Bud1" + b"\0" * 32, "ignored")
    put("dups/._original.png", b"\0\5\x16\7" + b"\0" * 60, "ignored")
    put(".thumbnails/x.png", _png(seed=160), "ignored")
    return expect


def _special_files(dest: Path, outside: Path | None, expect: dict[str, str]) -> None:
    ok = "accepted"
    special = dest / "special"
    special.mkdir(exist_ok=True)
    os.mkfifo(special / "pipe.jpg")
    expect["special/pipe.jpg"] = "quarantined:FIFO"
    os.mkfifo(special / "pipe-no-extension")
    expect["special/pipe-no-extension"] = "quarantined:FIFO"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = os.getcwd()
    try:  # a relative bind: AF_UNIX paths are limited to ~108 bytes
        os.chdir(special)
        sock.bind("socket.png")
        expect["special/socket.png"] = "quarantined:socket"
    except OSError:
        pass
    finally:
        os.chdir(cwd)
        sock.close()
    os.symlink("missing-target.png", special / "dangling.png")
    expect["special/dangling.png"] = "quarantined:broken symbolic link"
    os.symlink("loop-b.png", special / "loop-a.png")
    os.symlink("loop-a.png", special / "loop-b.png")
    expect["special/loop-a.png"] = expect["special/loop-b.png"] = "quarantined:broken symbolic link"
    os.symlink("../modes/rgb.png", special / "link-inside.png")
    expect["special/link-inside.png"] = ok  # another name for an image in the root
    os.symlink("../geometry", special / "linked-folder")
    os.symlink(os.path.abspath(dest / "geometry"), special / "linked-folder-abs")
    expect["special/linked-folder"] = expect["special/linked-folder-abs"] = "quarantined:to a folder"
    target = Path(outside or dest.parent) / "outside-target.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(_png(seed=150))
    os.symlink(os.path.abspath(target), special / "link-outside.png")
    os.symlink(os.path.relpath(target, special), special / "link-outside-relative.png")
    os.symlink("/etc/passwd", special / "link-etc-passwd.jpg")
    for rel in ("special/link-outside.png", "special/link-outside-relative.png", "special/link-etc-passwd.jpg"):
        expect[rel] = "quarantined:outside data/images"
    os.symlink("/dev/zero", special / "dev-zero.jpg")  # outside, and endless: never opened
    expect["special/dev-zero.jpg"] = "quarantined:outside data/images"
    os.symlink("pipe.jpg", special / "link-to-pipe.jpg")
    expect["special/link-to-pipe.jpg"] = "quarantined:FIFO"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_images.py DEST (an empty folder)")
    out = make_image_corpus(Path(sys.argv[1]))
    for rel, outcome in sorted(out.items()):
        print(f"{outcome:45s} {rel!a}")
    print(f"{len(out)} files", file=sys.stderr)
