"""Checks of one answer row, file format aside: its class (matched after NFC normalisation,
case and width folded), its image (path or content id), and for a region answer its region or
drawn polygon. Each returns the problem as a sentence a person can act on, or None.
"""

from __future__ import annotations

import re
import unicodedata

from coldstart.tasks import labelstudio
from coldstart.tasks.answerfiles import REGION_COLUMN, REGIONS_CSV
from coldstart.tasks.config import NEW_CLASS_PREFIX
from coldstart.tasks.imagerefs import HEX64
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.ontology import proposed_name, unknown_answer
from coldstart.tasks.regiontable import region_id, regions_dir, regions_parts
from coldstart.tasks.workspace import Workspace, unescape_formula

HEX16 = re.compile(r"^[0-9a-f]{16}$")


MATCH_IOU = 0.5  # a drawn polygon is a proposed region of its image when their masks overlap this much


# The region_id cell of a Label Studio polygon set aside into a .rows.csv that has no region id
# of ours (its outline is new or redrawn): dropped back, the row is refused, not read as an image's.
POLYGON_PREFIX = "polygon:"


def _variants(cell: str) -> list[str]:
    """How a class cell may have been written, most literal first: as is, with our formula
    escape undone, trimmed (typed by hand); each in NFC (class names are compared in NFC)."""
    out = []
    for a in dict.fromkeys([cell, unescape_formula(cell)]):
        out += [a, a.strip(), unescape_formula(a.strip())]
    return list(dict.fromkeys(unicodedata.normalize("NFC", v) for v in out if v))


class RegionIndex:
    """What region answers are checked against: the proposed regions, dropped ones included
    (data/labels/regions/), and the images' sizes. Read on first use: a file without region
    answers never reads them; the masks (RLE counts) only for Label Studio polygons."""
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._by_id: dict[str, tuple[str, str, int, int]] | None = None  # id -> (image id, path, height, width)
        self._counts: dict[str, list[tuple[str, str]]] | None = None  # image id -> [(region id, counts)]
        self._sizes: dict[str, tuple[int, int]] | None = None  # image id -> (width, height), from the manifest

    def _read(self, columns: list[str]) -> dict[str, list]:

        return regions_parts(regions_dir(self.ws)).read(columns=columns, sort=False).to_pydict()

    def get(self, rid: str) -> tuple[str, str, int, int] | None:
        """(image id, path, mask height, mask width) of a proposed region, or None."""
        if self._by_id is None:
            t = self._read(["image_id", "path", "height", "width"])
            self._by_id = {r: (i, p, h, w) for r, i, p, h, w in zip(t["region_id"], t["image_id"], t["path"],
                                                                   t["height"], t["width"])}
        return self._by_id.get(rid)

    def unknown(self, rid: str) -> str:
        if self.get(rid) is None and not self._by_id:
            return (f"unknown region {rid!r}: no regions were proposed yet (data/labels/regions/ is empty): run a "
                    f"round with regions.enabled: true, then answer the regions in {REGIONS_CSV}")
        return f"unknown region {rid!r}: region ids come from {REGIONS_CSV}"

    def masks(self, image_id: str) -> list[tuple[str, str]]:
        """The proposed regions of an image as (region id, RLE counts)."""
        if self._counts is None:
            t = self._read(["image_id", "counts"])
            self._counts = {}
            for r, i, c in zip(t["region_id"], t["image_id"], t["counts"]):
                self._counts.setdefault(i, []).append((r, c))
        return self._counts.get(image_id, [])

    def image_size(self, image_id: str) -> tuple[int, int] | None:
        """(width, height) of an image as the scan saw it (EXIF-oriented), or None if unknown."""
        if self._sizes is None:
            t = read_manifest_table(self.ws, ["image_id", "width", "height"]).to_pydict()
            self._sizes = {i: (w, h) for i, w, h in zip(t["image_id"], t["width"], t["height"]) if w and h}
        return self._sizes.get(image_id)

    def best_match(self, image_id: str, rle: dict) -> tuple[str, float] | None:
        """The proposed region of ``image_id`` whose mask overlaps ``rle`` most: (id, IoU), or None."""
        from pycocotools import mask as mask_utils

        size = list(rle["size"])
        # masks() and get() read the same table: every region of masks() is known to get()
        found = [(r, {"size": size, "counts": c.encode("ascii")}) for r, c in self.masks(image_id)
                 if (known := self.get(r)) is not None and list(known[2:]) == size]
        if not found:
            return None
        ious = mask_utils.iou([m for _, m in found], [{"size": size, "counts": rle["counts"].encode("ascii")}],
                              [0])
        k = int(ious[:, 0].argmax())
        return found[k][0], float(ious[k, 0])


def _label(cell: str, canonical: dict[str, str]) -> str | None:
    """The class a label cell names (the ontology's own string), or None."""
    return next((canonical[v] for v in _variants(cell) if v in canonical), None)


def _row_image(row, id_cols, images) -> tuple[str | None, str | None]:
    """The image a row names: (image id, None), (None, what is wrong), or (None, None) when its
    image cells are all empty."""
    image_id = None
    given = row.get("image_id", "").strip() if "image_id" in id_cols else ""
    if given:
        if not HEX64.match(given.lower()):
            return None, f"image_id {given[:80]!r} is not a sha256 (64 hex digits)"
        image_id, problem = images.resolve(given)
        if problem:
            return None, problem
    refs = [row[c] for c in id_cols if c != "image_id" and row.get(c, "").strip()]
    for ref in refs:
        got, problem = images.resolve(ref, want=image_id)
        if problem:
            return None, problem
        if image_id is not None and got != image_id:
            return None, f"{', '.join(id_cols)} name different images"
        image_id = got
    return image_id, None


def _class_problem(cell, canonical, folded) -> tuple[str | None, str | None]:
    """The class a label cell names: (label, None), or (None, what is wrong)."""
    label = _label(cell, canonical)
    if label is not None:
        return label, None
    shown_label = unicodedata.normalize("NFC", unescape_formula(cell.strip()))
    # "none of these" (unknown, ?, none), or new:<name> proposing a class (tasks/ontology.py).
    if (unknown := unknown_answer(shown_label)) is not None:
        name = proposed_name(unknown)
        return (canonical[name], None) if name in canonical else (unknown, None)
    if shown_label.casefold().startswith(NEW_CLASS_PREFIX):
        return None, f"{shown_label[:200]!r}: write the proposed class's name after {NEW_CLASS_PREFIX!r} (new:scratch)"
    hint = f" (did you mean {folded[shown_label.casefold()]!r}?)" if shown_label.casefold() in folded else ""
    names = list(canonical)
    shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    return None, (f"unknown class {shown_label[:200]!r}{hint}; valid classes: {shown}; or 'unknown' (none of these), "
                  f"or 'new:<name>' to propose a class")


def row_problem(row, id_cols, images, canonical, folded, seen, *, region_column: bool = False):
    """What is wrong with one answered row (a message), or ("ok", image_id, label), or None for a
    repeat of an answer already taken. ``region_column``: the file has a region_id column (empty
    in this row)."""
    image_id, problem = _row_image(row, id_cols, images)
    if problem:
        return problem
    if image_id is None:
        if region_column:
            return f"no image or region given ({', '.join([*id_cols, REGION_COLUMN])} are empty)"
        return f"no image given ({', '.join(id_cols)} are empty)"
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    if image_id in seen and seen[image_id][1] != label:
        return f"conflicting labels for one image: {label!r} here, {seen[image_id][1]!r} in {seen[image_id][0]}"
    if image_id in seen:
        return None
    return ("ok", image_id, label)


def region_row_problem(row, id_cols, images, regions: RegionIndex, canonical, folded):
    """A CSV region answer (its region_id cell filled): what is wrong (a message), or ("region",
    image_id, label, region_id, None)."""
    cell = unescape_formula(row[REGION_COLUMN].strip()).strip()
    rid = cell.lower()
    if cell.startswith(POLYGON_PREFIX):
        return (f"region_id {cell[:80]!r} is a polygon drawn in Label Studio: a CSV cannot carry its outline; fix it "
                f"in Label Studio and export the task again (or delete this row)")
    if not HEX16.match(rid):
        hint = ""
        try:
            float(cell)
            hint = " (a spreadsheet turned it into a number? format the column as text and copy the id again)"
        except ValueError:
            pass
        return f"region_id {cell[:80]!r} is not a region id (16 hex digits){hint}; region ids come from {REGIONS_CSV}"
    found = regions.get(rid)
    if found is None:
        return regions.unknown(rid)
    image_id, path = found[0], found[1]
    if image_id not in images.known:
        return (f"region {rid} is on image {path!r} (id {image_id[:12]}...), which is no longer in data/images/ "
                f"(removed or changed since the round proposed the region): drop this row")
    for c in id_cols:  # the row may also name the image: it must be the region's
        ref = row.get(c, "")
        if not ref.strip():
            continue
        if c == "image_id" and not HEX64.match(ref.strip().lower()):
            return f"image_id {ref.strip()[:80]!r} is not a sha256 (64 hex digits)"
        got, problem = images.resolve(ref, want=image_id)
        if got == image_id:
            continue
        if problem:
            return problem
        return (f"region {rid} is on image {path!r}, but {c} {ref.strip()[:200]!r} names another image: copy the "
                f"row's region_id and image from {REGIONS_CSV} together")
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    return ("region", image_id, label, rid, None)


def polygon_problem(row, id_cols, images, regions: RegionIndex, canonical, folded):
    """A Label Studio polygon (a row from labelstudio.parse_export): what is wrong (a message),
    or ("region", image_id, label, region_id, region). Matched to a proposed region of the task's
    image by its id (minus a ``-k`` part suffix), else by outline (the highest mask IoU, if at
    least MATCH_IOU), else it is a region the person drew: ``region`` is then its RLE."""
    image_id, problem = _row_image(row, id_cols, images)
    if problem:
        return problem
    if image_id is None:
        return f"no image given ({', '.join(id_cols)} are empty)"
    label, problem = _class_problem(row["label"], canonical, folded)
    if problem:
        return problem
    width, height = row["original_width"], row["original_height"]
    shown = f"polygon {row['result_id'][:40]!r} ({row['result']})"
    stem = re.sub(r"-\d+$", "", row["result_id"])
    found = regions.get(stem)
    if found is not None and found[0] == image_id:
        if (found[3], found[2]) != (width, height):
            return (f"{shown} was drawn on the image at {width}x{height} pixels, but region {stem} was proposed on it "
                    f"at {found[3]}x{found[2]}: Label Studio shows another version of the image; export the regions' "
                    f"tasks from coldstart again and redo it there")
        return ("region", image_id, label, stem, None)
    size = regions.image_size(image_id)
    if size is not None and size != (width, height):
        return (f"{shown} was drawn on the image at {width}x{height} pixels, but the image is {size[0]}x{size[1]}: "
                f"Label Studio shows another version of it; export its task from coldstart again and redo it there")
    rle = labelstudio.polygon_rle(row["points"], width, height)
    if rle is None:
        return (f"{shown} has an outline too long to rasterize (over {labelstudio.MAX_PERIMETER} pixels); "
                f"redraw it with fewer, simpler edges")
    from pycocotools import mask as mask_utils

    if not mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}):
        return f"{shown} covers no pixel of the image (its points enclose no area); redraw it"
    best = regions.best_match(image_id, rle)
    if best is not None and best[1] >= MATCH_IOU:
        return ("region", image_id, label, best[0], None)

    return ("region", image_id, label, region_id(image_id, rle["counts"]), rle)


def region_repeat(where, row, problem, seen_regions, accepted, is_json) -> tuple[str | None, str | None]:
    """A region answer for a region answered before in the file -> (a row problem, or None: the
    row is not taken; a problem with the whole task, or None).
    The same label again is kept once (a Label Studio task's annotators are all credited); another
    label is a conflict: a row problem naming the other row, or within one Label Studio task (two
    annotators, or two polygons of one region) a problem with the task."""
    _, _, label, rid, _ = problem
    first_where, first_label, k, first = seen_regions[rid]
    if first_label != label:
        if is_json and first_where == where:
            labels = ", ".join(sorted({first_label, label}))
            if first["annotator"] != row["annotator"]:
                return None, (f"annotators disagree on region {rid} ({labels}); settle it in Label Studio "
                              f"and export again")
            return None, (f"{first['result']} and {row['result']} outline one region ({rid}) with different "
                          f"labels ({labels}); give them one label in Label Studio and export again")
        return f"conflicting labels for one region: {label!r} here, {first_label!r} in {first_where}", None
    if is_json and first_where == where:
        n, image_id, lab, who, _, rle = accepted[k]
        names = sorted({*who.split(","), unicodedata.normalize("NFC", row["annotator"])} - {""})
        accepted[k] = (n, image_id, lab, ",".join(names), rid, rle)
    return None, None
