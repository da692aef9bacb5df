"""`coldstart regions`, `prompts` and `finetune`: the model-facing commands outside a round."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from coldstart.models.clip import load_clip, model_id_for
from coldstart.models.finetune import FinetuneConfig, finetune, save_weights
from coldstart.models.probe import LinearHead
from coldstart.models.sam import load_sam
from coldstart.tasks import labelstudio
from coldstart.tasks.commands import command, write_json
from coldstart.tasks.embed import ImageFiles, clip_config, load_model
from coldstart.tasks.heads import load_chosen, zero_shot_head
from coldstart.tasks.imagefiles import sha256_file
from coldstart.tasks.labellog import human_labels, read_events
from coldstart.tasks.ontology import negative_labels
from coldstart.tasks.pool import read_pool
from coldstart.tasks.prompts import ablate
from coldstart.tasks.regionexports import regions_to_coco, regions_to_labelstudio
from coldstart.tasks.regions import no_masks_hint, region_head, segment_and_label
from coldstart.tasks.samcache import resolve_checkpoint
from coldstart.tasks.scan import image_table
from coldstart.tasks.store import EmbeddingStore
from coldstart.tasks.workspace import Workspace, atomic_write_text


def cmd_regions(a) -> int:
    """Segment images with SAM, clean the masks up, label each with the workspace's labeler (the
    last round's chosen head, else zero-shot), and write COCO (and Label Studio) files."""
    ws = Workspace.open(a.workspace)
    params = ws.params()
    cfg = resolve_checkpoint(ws, params.regions)
    params = params.model_copy(update={"regions": cfg})
    sam = load_sam(cfg)
    clip = load_model(params.model)
    head, labeler = region_head(ws, params, clip)
    classes, negatives = params.ontology.labels, negative_labels(params.ontology)

    def named():
        for name in a.images:
            path = Path(name).expanduser().resolve()
            # as Label Studio's local files and the workspace's tables name images: relative to data/images/
            shown = path.relative_to(ws.images).as_posix() if path.is_relative_to(ws.images) else str(path)
            yield sha256_file(path), shown, path

    seg, labeled, label_s = segment_and_label(params, sam, clip, head, labeler, named())
    regions, images, found, seg_s = [r for r in labeled if not r.dropped], seg.images, seg.found, seg.seg_s
    cleaned = Counter({k: v for k, v in seg.cleaned.items()})
    cleaned["containment"] += sum(1 for r in labeled if r.dropped == "contained")
    negative = sum(1 for r in labeled if r.dropped == "negative_label")
    doc = regions_to_coco(regions, images, classes, negatives=negatives, description=f"coldstart regions ({labeler})")
    atomic_write_text(Path(a.coco), json.dumps(doc, ensure_ascii=False) + "\n")
    if a.labelstudio:
        out = Path(a.labelstudio)
        atomic_write_text(out, labelstudio.tasks_json(regions_to_labelstudio(regions, images, model_version=labeler)))
        atomic_write_text(out.with_name("label_config.xml"), labelstudio.label_config(
            classes, polygons=[c for c in classes if c not in negatives]))
    print(f"{len(regions)} region(s) on {len(images)} image(s), labeled by {labeler}")
    for image_id, shown, _, _ in images:
        labels = Counter(r.label for r in regions if r.image_id == image_id)
        masks, kept = found[image_id]
        listed = ", ".join(f"{label} {n}" for label, n in labels.most_common()) or "none"
        print(f"  {shown}: {masks} mask(s), {kept} after cleanup, {sum(labels.values())} region(s): {listed}")
    if any(cleaned.values()) or negative:
        print("  removed: " + ", ".join([f"{why} {n}" for why, n in cleaned.items() if n] +
                                         ([f"negative label {negative}"] if negative else [])))
    share = f" ({label_s / seg_s:.0%} of segmentation)" if seg_s > 0 else ""
    print(f"  segmentation {seg_s:.2f} s ({sam.model_id}), labeling {label_s:.2f} s{share}")
    if images and not any(m for m, _ in found.values()):
        print(f"  HINT {no_masks_hint(cfg, len(images))}")
    print(f"  COCO: {Path(a.coco).resolve()}" + (f"\n  Label Studio: {Path(a.labelstudio).resolve()} (config: "
                                                 f"{Path(a.labelstudio).resolve().with_name('label_config.xml')})"
                                                 if a.labelstudio else ""))
    return 0


def cmd_prompts(a) -> int:
    """Class weight matrix (saved as .npy), ontology warnings, and optionally the ablation."""


    ws = Workspace.open(a.workspace)
    params = ws.params()
    clip = load_model(params.model)
    head, warnings = zero_shot_head(ws, params, clip)
    onto = params.ontology
    print(f"{clip.model_id}: {len(onto.scoring_classes)} classes -> {len(onto.class_names)} labels, "
          f"{sum(len(p) for p in onto.prompts())} prompts")
    for w in warnings:
        print(f"WARNING {w}")  # all of them: this command is where a person reviews the ontology
    if a.save:
        np.save(a.save, head.weights.astype(np.float32))
        print(f"saved the class weight matrix {head.weights.shape} (classes x dim, float32, ontology order) to {a.save}")
    if a.ablate:

        # Zero-shot scores the written classes only: "none of these" answers are left out here.
        humans = {i: label for i, label in human_labels(read_events(ws)).items() if label in onto.class_names}
        pool = read_pool(ws, EmbeddingStore(ws.embeddings, clip.model_id, params.views.key("global")), humans)
        if not pool.labeled_ids:
            print("no human labels yet: run a round and answer a review batch first")
            return 0
        y = np.array([onto.class_names.index(humans[i]) for i in pool.labeled_ids])
        rows = ablate(clip, onto, pool.labeled_X, y)
        print(f"\nzero-shot accuracy on {len(y)} human-labeled images:")
        for r in rows:
            extra = f"   (recall of its class {r.class_recall:.1%})" if r.class_recall is not None else ""
            print(f"  {r.accuracy:6.1%}  {r.variant}{extra}")
        write_json(a.json, [r.__dict__ for r in rows])
    return 0


def cmd_finetune(a) -> int:
    """Fine-tune the last vision blocks on the human labels; write a loadable checkpoint."""
    ws = Workspace.open(a.workspace)
    params = ws.params()
    # Trained in place (never the shared copy), in fp32: int8's quantised layers cannot learn. The
    # checkpoint it writes is plain weights; model.precision applies when it is loaded.
    configured = clip_config(params.model)
    clip = load_clip(dataclasses.replace(configured, precision="fp32"), fresh=True)
    humans = human_labels(read_events(ws))
    table = image_table(ws)
    # The classes as written: "none of these" answers have no class to fine-tune towards.
    items = [(str(ws.images / table[i]), params.ontology.class_names.index(label))
             for i, label in humans.items() if i in table and label in params.ontology.class_names]
    if len(items) < 2:
        print("coldstart: error: fine-tuning needs human labels; run rounds and answer review batches first",
              file=sys.stderr)
        return 2
    chosen = load_chosen(ws)
    head = chosen.head if chosen is not None and chosen.model_id == model_id_for(configured) else None
    if not isinstance(head, LinearHead):  # zero-shot (or nothing trained yet): start from the text weights
        zs, _ = zero_shot_head(ws, params, clip)
        head = LinearHead(zs.label_weights(), np.zeros(zs.n_labels, np.float32))
    files = ImageFiles([p for p, _ in items], clip.preprocess, clip.image_size)
    labels = torch.tensor([y for _, y in items])

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, k):
            _, pixels, _, err = files[k]
            if pixels is None:
                raise RuntimeError(f"{files.paths[k]}: {err}")
            return pixels[0], labels[k]

    cfg = FinetuneConfig(blocks=a.blocks, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size)
    if clip.device.type != "cuda":
        print("note: no GPU visible; fine-tuning on the CPU is slow beyond the tiniest models", file=sys.stderr)
    loader = DataLoader(Pairs(), batch_size=cfg.batch_size, shuffle=True)
    finetune(clip, loader, head, cfg)
    out = Path(a.out) if a.out else ws.root / "data" / "finetuned" / f"{params.model.name}-ft{a.blocks}.safetensors"
    save_weights(clip, out)
    print(f"fine-tuned the last {a.blocks} vision block(s) of {clip.model_id} on {len(items)} human labels "
          f"for {a.epochs} epoch(s): {out}\nto use it: set model.pretrained: {ws.rel(out) if out.is_relative_to(ws.root) else out} "
          f"in params.yaml (the next round re-embeds every image), and version it: cd {shlex.quote(str(ws.root))} && "
          f"{command('dvc')} add {shlex.quote(str(out))}")
    return 0
