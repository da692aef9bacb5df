"""export: the labeled dataset in the layouts training code reads.

One row per file path (duplicate files each listed, sharing their content's label), from the
manifest and the resolved table as a round left them. Formats:

- ``csv``: path, image_id, label, source (human or the model kind), confidence, round; text cells
  a spreadsheet would run as a formula get a leading ``'`` (intake reads the file back as answers);
- ``imagefolder``: ``OUT/<label>/<path with "/" as "__">``, plain copies of the images (the
  umask's mode, one link: editing one never reaches data/images or the DVC cache; ``copy=False``:
  symlinks to data/images, a read-only view that takes no space), loadable as-is by ``torchvision.datasets.ImageFolder``, which loads only files named
  ``.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff .webp``: a file named otherwise (``incoming/<hash>.img``
  kept by ``coldstart api``) gets the extension of its decoded format appended (``<hash>.img.jpg``),
  and a format with none of those extensions (GIF) is written as a PNG copy of its first frame;
- ``labelstudio``: a tasks JSON with each label as a pre-annotation, plus ``label_config.xml``;
- ``coco``: COCO JSON with ``images``, ``categories`` and one whole-image annotation per image
  (``segmentation``: the whole image as one polygon, ``bbox``, ``area``, ``iscrowd`` 0), so
  pycocotools loads it and ``annToMask`` works on every annotation;
- files labeled ``unknown`` ("none of these") are no class of the dataset: every format leaves
  them out and lists them apart in ``<out>.unknown.csv`` (csv columns), beside the export;
- ``coco-regions``: COCO instances JSON of the regions table (``data/labels/regions/``, SAM masks
  labeled by the round's labeler): one RLE annotation per region, images with at least one region.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from coldstart.tasks import labelstudio
from coldstart.tasks.commands import command
from coldstart.tasks.config import UNKNOWN_LABEL
from coldstart.tasks.errors import WorkspaceError
from coldstart.tasks.manifest import read_manifest_table
from coldstart.tasks.ontology import negative_labels
from coldstart.tasks.parts import PartTable
from coldstart.tasks.regionexports import ImageInfo, regions_to_coco
from coldstart.tasks.regiontable import regions_dir, regions_of, regions_parts
from coldstart.tasks.relabel import RESOLVED_FIELDS, resolved_schema
from coldstart.tasks.tokens import image_urls
from coldstart.tasks.workspace import Workspace, atomic_write_text, write_csv

FORMATS = ("csv", "imagefolder", "labelstudio", "coco", "coco-regions")
CSV_FIELDS = ["path", "image_id", "label", "source", "confidence", "round"]


@dataclass
class ExportResult:
    rows: int  # files exported
    skipped: int  # files left out by min_confidence
    out: Path
    unknown: int = 0  # files labeled "none of these": not in the export, listed in unknown_out
    unknown_out: Path | None = None


def labeled_files(ws: Workspace, round_no: int | None = None, min_confidence: float | None = None
                  ) -> tuple[list[dict], int]:
    """Every current file with its label, as of round ``round_no`` (None: the latest), by path;
    auto labels under ``min_confidence`` left out. Returns (rows, how many were left out)."""
    tags = ws.round_tags()
    if not tags:
        raise WorkspaceError(f"{ws.root}: no round yet; run `{_command('coldstart')} round -w {_quote(ws.root)}` first")
    if round_no is not None and round_no not in tags:
        raise WorkspaceError(f"there is no round {round_no} (rounds: {', '.join(map(str, tags))})")
    before = None if round_no is None else round_no + 1
    labels = PartTable(ws.resolved, "image_id", resolved_schema(1))
    if round_no is not None and not any(r <= round_no for r, *_ in labels.files(before)):
        raise WorkspaceError(f"round {round_no}'s labels are no longer in this workspace (older parts are pruned); "
                             f"get them with `{_command('dvc')} get {_quote(ws.root)} data/labels/resolved --rev "
                             f"round-{round_no:03d} -o DIR`")
    table = labels.read(columns=RESOLVED_FIELDS[1:], before=before)
    by_id = {r["image_id"]: r for r in table.to_pylist()}
    files = read_manifest_table(ws, ["image_id", "width", "height"], before=before).to_pylist()
    rows, skipped = [], 0
    for f in files:
        r = by_id.get(f["image_id"])
        if r is None:
            continue  # not labeled yet (embedded after that round)
        if min_confidence is not None and r["source"] != "human" and r["confidence"] < min_confidence:
            skipped += 1
            continue
        rows.append({"path": f["path"], "image_id": f["image_id"], "label": r["label"],
                     "source": r["source"], "confidence": round(float(r["confidence"]), 6), "round": r["round"],
                     "width": f["width"], "height": f["height"]})
    return rows, skipped


# What torchvision.datasets.ImageFolder loads (torchvision.datasets.folder.IMG_EXTENSIONS); it
# skips any other file silently.
IMAGEFOLDER_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Pillow's format name -> the extension a file of that format gets when its name has none of the above.
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp",
                     "PPM": ".ppm"}


def _imagefolder_file(src: Path, name: str) -> tuple[str, bool]:
    """The file name an image gets in an ImageFolder export, and whether it must be converted
    (to PNG: its format has no extension ImageFolder loads). A name ImageFolder loads is kept;
    otherwise the extension of the decoded format (Pillow's, from the header) is appended."""
    if name.lower().endswith(IMAGEFOLDER_EXTENSIONS):
        return name, False
    with Image.open(src) as img:
        fmt = img.format
    ext = FORMAT_EXTENSIONS.get(fmt or "")
    return (name + ext, False) if ext else (name + ".png", True)


def _folder_name(label: str) -> str:
    """A label as a folder name: any script is fine; path separators and NUL are not."""
    name = label.replace("/", "_").replace("\\", "_").replace("\0", "")
    return name if name not in ("", ".", "..") else f"_{name}_"


def export(ws: Workspace, fmt: str, out: Path, *, round_no: int | None = None, min_confidence: float | None = None,
           copy: bool = True) -> ExportResult:
    """Write the labeled files of a round (default: the latest) in ``fmt`` to ``out``."""
    if fmt not in FORMATS:
        raise WorkspaceError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "coco-regions":
        return _export_regions(ws, Path(out).expanduser().resolve(), round_no, min_confidence)
    rows, skipped = labeled_files(ws, round_no, min_confidence)
    out = Path(out).expanduser().resolve()
    # "None of these" is no class of the dataset: those files are listed apart, beside the export.
    unknown = [r for r in rows if r["label"] == UNKNOWN_LABEL]
    rows = [r for r in rows if r["label"] != UNKNOWN_LABEL]
    if fmt == "csv":
        write_csv(out, CSV_FIELDS, [{k: r[k] for k in CSV_FIELDS} for r in rows], escape_formulas=True)
    elif fmt == "imagefolder":
        if out.exists() and any(out.iterdir()):
            raise WorkspaceError(f"{out} is not empty: give a new folder for an ImageFolder export")
        for r in rows:
            src = ws.images / r["path"]
            name, convert = _imagefolder_file(src, r["path"].replace("/", "__"))
            dest = out / _folder_name(r["label"]) / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if convert:
                with Image.open(src) as img:  # the first frame, as the round embedded it
                    img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB").save(
                        dest, format="PNG")
            elif copy:  # not copy2: the image is DVC's read-only link, and its mode must not follow
                shutil.copyfile(src, dest)
                st = src.stat()
                os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
            else:
                os.symlink(src, dest)
    elif fmt == "labelstudio":  # human labels as annotations; images as labelstudio.images says
        atomic_write_text(out, labelstudio.tasks_json(labelstudio.export_tasks(rows, image_urls(ws))))
        classes = sorted({r["label"] for r in rows} | set(ws.params().ontology.class_names))
        atomic_write_text(out.with_name("label_config.xml"), labelstudio.label_config(classes))
    else:  # coco
        names = list(dict.fromkeys(ws.params().ontology.class_names + sorted({r["label"] for r in rows})))
        cat = {n: k + 1 for k, n in enumerate(names)}
        doc = {
            "info": {"description": f"coldstart export of {ws.root.name}", "round": round_no or ws.round_tags()[-1]},
            "categories": [{"id": cat[n], "name": n} for n in names],
            "images": [{"id": k + 1, "file_name": r["path"], "width": r["width"], "height": r["height"],
                        "coldstart_image_id": r["image_id"]} for k, r in enumerate(rows)],
            # An image-level label covers the whole image: its segmentation is the image's outline
            # (one polygon), so tools that need masks (pycocotools annToMask) work on every annotation.
            "annotations": [{"id": k + 1, "image_id": k + 1, "category_id": cat[r["label"]],
                             "segmentation": [_whole_image(r["width"], r["height"])],
                             "bbox": [0, 0, r["width"], r["height"]], "area": r["width"] * r["height"], "iscrowd": 0,
                             "score": r["confidence"], "source": r["source"]} for k, r in enumerate(rows)],
        }
        atomic_write_text(out, json.dumps(doc, ensure_ascii=False, indent=1) + "\n")
    apart = unknown_file(out, fmt)
    if unknown:
        write_csv(apart, CSV_FIELDS, [{k: r[k] for k in CSV_FIELDS} for r in unknown], escape_formulas=True)
    return ExportResult(rows=len(rows), skipped=skipped, out=out, unknown=len(unknown),
                        unknown_out=apart if unknown else None)


def unknown_file(out: Path, fmt: str) -> Path:
    """Where an export lists the files labeled "none of these": beside it, ``<name>.unknown.csv``."""
    return out.with_suffix(".unknown.csv") if fmt != "imagefolder" else out.with_name(out.name + ".unknown.csv")


def _command(name: str) -> str:
    """``name`` as a command one can paste (the CLI's full path to it)."""

    return command(name)


def _quote(path: Path | str) -> str:
    return shlex.quote(str(path))


def _whole_image(width: int, height: int) -> list[int]:
    """The polygon of a whole ``width`` x ``height`` image (COCO: x1, y1, x2, y2, ...)."""
    return [0, 0, width, 0, width, height, 0, height]


def _export_regions(ws: Workspace, out: Path, round_no: int | None, min_confidence: float | None) -> ExportResult:
    """The regions table (as round ``round_no`` left it) as COCO instances JSON; rows: regions."""
    before = None if round_no is None else round_no + 1
    parts = regions_parts(regions_dir(ws))
    if not parts.files(before):
        raise WorkspaceError(f"{ws.root}: no regions{'' if round_no is None else f' as of round {round_no}'}; set "
                             f"regions.enabled: true in params.yaml and run a round (`{_command('coldstart')} regions` "
                             f"labels images ad hoc)")
    every = [r for r in regions_of(parts.read(before=before)) if not r.dropped]
    regions = [r for r in every if min_confidence is None or r.confidence >= min_confidence]
    images: dict[str, ImageInfo] = {}
    for r in regions:
        images.setdefault(r.image_id, (r.image_id, r.path, r.rle["size"][1], r.rle["size"][0]))
    onto = ws.params().ontology
    names = list(dict.fromkeys(onto.class_names + sorted({r.label for r in regions})))
    doc = regions_to_coco(regions, list(images.values()), names, negatives=negative_labels(onto),
                          description=f"coldstart regions of {ws.root.name}")
    atomic_write_text(out, json.dumps(doc, ensure_ascii=False) + "\n")
    return ExportResult(rows=len(regions), skipped=len(every) - len(regions), out=out)
