"""Every spelling of a path that names one image, resolved to its content id.

People and tools write the same file many ways: NFC or NFD (macOS), ``./`` steps, Windows
separators, a ``data/images/`` prefix, percent-encoding, Label Studio's local-files, upload and
signed API URLs. ``ImageIndex`` finds the image each names, exactly first, and never anything
outside the image root.
"""

from __future__ import annotations

import re
import unicodedata
import urllib.parse
from pathlib import PurePosixPath
from typing import Iterator

from coldstart.tasks import labelstudio
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.workspace import Workspace, read_csv, unescape_formula

HEX64 = re.compile(r"^[0-9a-f]{64}$")


# Label Studio URL forms that name a file: its local-files serving (``?d=`` relative to the
# document root, data/), its uploads (``/data/upload/<project>/<8 hex>-<name>``: a name, no
# folder), and the signed image URLs of `coldstart api` (``/images/<image id>?exp=&sig=``).
LOCAL_FILES = labelstudio.LOCAL_FILES_PREFIX.removesuffix("images/")  # "/data/local-files/?d="


UPLOAD = re.compile(r"/data/upload/\d+/([^?#]+)")


SIGNED = re.compile(r"/images/([0-9a-fA-F]{64})(?:[?#]|$)")


UPLOAD_ID = re.compile(r"^[0-9a-f]{8}-")


def _decodings(text: str) -> list[str]:
    """``text`` as written, percent-decoded, and percent-decoded with ``+`` as a space."""
    return list(dict.fromkeys([text, urllib.parse.unquote(text), urllib.parse.unquote_plus(text)]))


def _relative(path: str) -> list[str]:
    """A path as written, with Windows separators as ``/``, then without ``./`` steps
    (``./a/./b`` is ``a/b``) and without a ``data/images/`` prefix. ``..`` is left in place:
    such a path names no manifest path and is refused as outside the image root."""
    out = []
    for p in dict.fromkeys([path, path.replace("\\", "/")]):
        bare = re.sub(r"(?:^|(?<=/))(?:\./)+", "", p)
        out += [p, bare, p.removeprefix("data/images/"), bare.removeprefix("data/images/"),
                bare.removeprefix("data/images/").removeprefix("./")]
    return list(dict.fromkeys(v for v in out if v))


def _spellings(cell: str) -> tuple[list[str], list[str]]:
    """The paths under data/images/ an image cell may spell, most literal first, and the
    Label Studio upload names it gives (matched by file name). Tried: the cell as written,
    formula escape undone, trimmed; a local-files URL's ``d`` (under ``images/``); each as
    written, then percent-decoded (``%2F``, ``%20`` or ``+`` for a space); see _relative."""
    plain = list(dict.fromkeys(v for a in dict.fromkeys([cell, unescape_formula(cell)])
                               for v in (a, a.strip(), unescape_formula(a.strip())) if v))
    paths, uploads = [], []
    for text in plain:
        at = text.find(LOCAL_FILES)
        if at >= 0:  # Label Studio serves data/ there: d=images/<path>, maybe encoded as a whole
            paths += [d[len("images/"):] for d in _decodings(text[at + len(LOCAL_FILES):]) if d.startswith("images/")]
            continue
        m = UPLOAD.search(text)
        if m:
            uploads += [u for n in _decodings(m.group(1)) for u in (n, UPLOAD_ID.sub("", n))]
            continue
        paths.append(text)
    paths += [d for p in list(paths) for d in _decodings(p)]
    return list(dict.fromkeys(r for p in paths for r in _relative(p))), list(dict.fromkeys(uploads))


def _outside(path: str) -> bool:
    """Whether a spelled path leaves data/images/ (absolute, a drive, a ``..`` step)."""
    p = PurePosixPath(path.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or bool(re.match(r"^[A-Za-z]:", path))


def _content_id(cell: str) -> str | None:
    """The image id a cell gives: a sha256 (64 hex), or the id in a signed `coldstart api` image
    URL (``.../images/<id>?exp=...&sig=...``; the signature is not checked: the id names the
    image whether or not the URL has expired)."""
    text = unescape_formula(cell.strip()).strip()
    if HEX64.match(text.lower()):
        return text.lower()
    if "://" in text or text.startswith("/images/"):
        m = SIGNED.search(urllib.parse.urlsplit(text).path + "?")
        if m:
            return m.group(1).lower()
    return None


class ImageIndex:
    """What answer rows are checked against: the manifest's paths (exactly as on disk, so NFC
    or NFD) and ids, the quarantine."""

    def __init__(self, ws: Workspace) -> None:
        self.by_path = dict(zip(*read_manifest_table(ws, ["image_id"]).to_pydict().values()))
        self.known = set(self.by_path.values())
        self.quarantined = {r["path"]: r["reason"] for r in read_csv(ws.quarantine)}
        self._nfc: dict[str, list[str]] = {}  # NFC form -> the non-ASCII paths (manifest, quarantine) with it
        for p in [*self.by_path, *self.quarantined]:
            if not p.isascii():
                self._nfc.setdefault(unicodedata.normalize("NFC", p), []).append(p)
        self._names: dict[str, list[str]] | None = None  # NFC file name -> manifest paths (upload URLs)

    def _equal_up_to_nfc(self, spelled: str) -> list[str]:
        """The manifest and quarantined paths equal to ``spelled`` after NFC normalisation."""
        key = unicodedata.normalize("NFC", spelled)
        found = list(self._nfc.get(key, []))
        if key.isascii() and (key in self.by_path or key in self.quarantined):
            found.append(key)
        return found

    def _named(self, name: str) -> list[str]:
        """The manifest paths whose file name is ``name`` (up to NFC)."""
        if self._names is None:
            self._names = {}
            for p in self.by_path:
                self._names.setdefault(unicodedata.normalize("NFC", p.rpartition("/")[2]), []).append(p)
        return self._names.get(unicodedata.normalize("NFC", name), [])

    def _candidates(self, ref: str) -> Iterator[tuple[str, list[str]]]:
        """(how, the paths it names) for each spelling of ``ref``: every exact match first, then
        matches up to NFC, then Label Studio upload names by file name."""
        paths, uploads = _spellings(ref)
        for p in paths:
            if p in self.by_path or p in self.quarantined:
                yield "exact", [p]
        for p in paths:
            yield "nfc", self._equal_up_to_nfc(p)
        for u in uploads:
            yield "upload", self._named(u)

    def resolve(self, ref: str, want: str | None = None) -> tuple[str | None, str | None]:
        """A content id, path under the image root or Label Studio image URL -> (image id,
        problem). With ``want`` (the row's image_id), any spelling that names that image counts;
        else an exact path wins, then one equal up to NFC (two such files: a problem), then an
        upload URL's file name when one image has it. Nothing is opened: a ``..`` or absolute
        spelling matches no manifest path and is refused as outside the image root."""
        image_id = _content_id(ref)
        if image_id is not None:
            return (image_id, None) if image_id in self.known else (None, f"unknown image id {ref.strip()}")
        got = self.by_path.get(ref)  # the common case, the path exactly as on disk
        if got is not None and want in (None, got):
            return got, None
        found = quarantined = None
        for how, paths in self._candidates(ref):
            ids = list(dict.fromkeys(self.by_path[p] for p in paths if p in self.by_path))
            if want is not None and want in ids:
                return want, None
            if want is None and len(ids) > 1:
                shown = paths[0] if how != "upload" else ref.strip()
                return None, (f"{len(paths)} files in data/images/ are named {shown!r} up to Unicode normalisation "
                              f"(NFC) or as a Label Studio upload; give the exact path, or the image_id")
            if ids and want is None:
                return ids[0], None
            found = found or (ids[0] if ids else None)
            q = next((p for p in paths if p in self.quarantined), None)
            if q is not None and quarantined is None:
                quarantined = f"image {ref!r} is quarantined ({self.quarantined[q]}); fix or replace the file first"
                if how == "exact" and want is None:  # that very file, not a twin of it
                    return None, quarantined
        if found is not None:
            return found, None  # another image than ``want``: the caller says so
        return None, quarantined or self._not_found(ref)

    @staticmethod
    def _not_found(ref: str) -> str:
        """Why no image was found for ``ref``: outside the image root, a URL, or unknown."""
        paths, _ = _spellings(ref)
        if any(_outside(p) for p in paths) or (LOCAL_FILES in ref and not paths):
            return f"path {ref!r} points outside the image root data/images/; give a path relative to it"
        plain = unescape_formula(ref.strip())
        if "://" in plain or plain.lower().startswith("file:"):
            return f"{ref!r} is a URL; give the image's path relative to data/images/ or its sha256 id"
        return f"unknown image {ref!r}: no such file under data/images/ (run a round to scan new images)"
