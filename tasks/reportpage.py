"""The round report as HTML: self-contained (JPEG data-URI thumbnails, inline SVG charts, HTML
tables, no script), its sections in order, each a method of ``Page``."""

from __future__ import annotations

import html
import logging
import math
from typing import Any, Collection

import numpy as np

from coldstart.tasks.config import UNKNOWN_LABEL
from coldstart.tasks.labellog import describe_answers
from coldstart.tasks.reportdata import ReportData, economics, fit_curve, projection
from coldstart.tasks.thumbs import MAX_THUMBS, THUMB_PX, Thumbs

log = logging.getLogger(__name__)


DEFECT_PX = 192  # long side of a defect image with its box (and mask) drawn on it


STRIP = 6  # per label: the most and the least confident auto labels shown (fewer with many labels)


MAX_LABEL_SECTIONS = 150  # labels with a section of their own (the most frequent, when there are more)


MAX_LABEL_ROWS = 400  # labels in the accuracy table (the audited and most frequent, when there are more)


PER_LABEL_REVIEW = 12  # review items shown with thumbnails in a label's section


PER_LABEL_FLAGS = 8


PER_LABEL_DEFECTS = 4


MAX_REVIEW_ROWS = 300  # the review batch's table (text)


MAX_QUARANTINE_ROWS = 50


MAX_CONFUSION = 40  # labels beyond this: the most confused pairs instead of the matrix


SECTIONS = {"counts": "Counts", "accuracy": "Accuracy of the auto labels", "learning-curve": "Learning curve",
            "review": "Review batch", "proposals": "Proposed classes", "labels": "Per label", "confusion": "Confusion matrix (held out)",
            "calibration": "Calibration", "economics": "Label economics"}


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}%"


def interval_text(iv: tuple[float, float] | None) -> str:
    return "–" if iv is None else f"{pct(iv[0])} – {pct(iv[1])}"


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei",sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:16px 24px 48px}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;color:#c9d0dc}nav a{color:#c9d0dc;margin-right:12px;font-size:13px}
section{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:12px 18px;margin:16px 0}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:15px;margin:14px 0 6px}h4{font-size:13px;margin:10px 0 4px;color:#4a5468}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #dde1e8;padding:3px 7px;text-align:left;
vertical-align:top}th{background:#f0f2f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.big{display:flex;flex-wrap:wrap;gap:10px}.big div{border:1px solid #dde1e8;border-radius:6px;padding:8px 12px;
min-width:130px}.big b{display:block;font-size:22px}.muted{color:#667085}.note{background:#fff8e1;
border-left:3px solid #f0b400;padding:6px 10px}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:2px 0 6px}figure{margin:0;width:104px;font-size:11px}
figure.wide{width:200px}figure img{display:block;border:1px solid #dde1e8;background:#eee;max-width:100%}
figcaption{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.nothumb{display:flex;align-items:center;justify-content:center;width:96px;height:64px;background:#eef0f4;
color:#667085;font-size:10px;text-align:center}
.label{border-top:1px solid #dde1e8;padding-top:6px}svg text{font-family:inherit;font-size:11px;fill:#1d2330}
.cm td{min-width:22px;text-align:center}.cm th.r{writing-mode:vertical-rl;transform:rotate(180deg)}
"""


class Page:
    def __init__(self, data: ReportData, thumbs: Thumbs):
        self.d, self.thumbs = data, thumbs

    # small pieces

    def figure(self, path: str, caption: str, title: str = "", size: int = THUMB_PX, box: str = "",
               rle: dict | None = None) -> str:
        got = self.thumbs.get(path, size, box, rle)
        if got is None:
            img = f'<div class="nothumb">{esc("no preview")}</div>'
        else:
            uri, w, h = got
            grow = size / max(w, h) if max(w, h) < size // 2 else 1.0  # tiny images: shown larger, same bytes
            img = f'<img src="{uri}" width="{round(w * grow)}" height="{round(h * grow)}" alt="{esc(path)}">'
        cls = ' class="wide"' if size > THUMB_PX else ""
        return (f'<figure{cls} title="{esc(title or path)}">{img}<figcaption>{caption}</figcaption>'
                f'</figure>')

    @staticmethod
    def table(head: list[str] | None, rows: list[list[str]], numeric: Collection[int] = frozenset()) -> str:
        """``rows``: cells already HTML (escaped by the caller); ``head``: plain text."""
        th = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>" if head else ""
        body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                         for i, c in enumerate(r)) + "</tr>" for r in rows)
        return f"<table>{th}<tbody>{body}</tbody></table>"

    def label_name(self, k: int) -> str:
        return self.d.classes[k] if 0 <= k < len(self.d.classes) else "?"

    # sections

    def counts(self) -> str:
        d, t = self.d, self.d.table
        auto = ~t.human
        below = int(np.count_nonzero(auto & (t.confidence < d.threshold))) if d.threshold is not None else None
        intake = d.record.get("intake") or {}
        tiles = [("images labeled", len(t.label)), ("quarantined", len(d.quarantine)),
                 ("human labels", int(t.human.sum())), (f"auto labels ({d.model})", int(auto.sum())),
                 ("below threshold", "–" if below is None else below)]
        html_ = '<div class="big">' + "".join(f"<div><b>{esc(v)}</b>{esc(k)}</div>" for k, v in tiles) + "</div>"
        extra = []
        if d.threshold is not None and below is not None:  # below is None only without a threshold
            extra.append(f"Auto labels below the auto-accept confidence {d.threshold:.3f}: {below} "
                         f"({pct(below / max(1, int(auto.sum())))} of the auto labels).")
        if intake:
            extra.append(f"This round took in {describe_answers(intake.get('round_answers') or {})}; "
                         f"{int(intake.get('human_labels', 0))} images have a human label.")
        churn = (d.record.get("relabel") or {}).get("churn")
        if churn is not None:
            extra.append(f"Label churn since the previous round: {pct(churn)}.")
        html_ += "".join(f"<p>{esc(x)}</p>" for x in extra)
        if d.quarantine:
            rows = [[esc(q.get("path", "")), esc(q.get("reason", "")), esc(q.get("round", ""))]
                    for q in d.quarantine[:MAX_QUARANTINE_ROWS]]
            html_ += "<h3>Quarantined files and why</h3>" + self.table(["file", "reason", "round"], rows)
            if len(d.quarantine) > MAX_QUARANTINE_ROWS:
                html_ += (f'<p class="muted">… and {len(d.quarantine) - MAX_QUARANTINE_ROWS} more: '
                          f"data/store/quarantine.csv lists them all.</p>")
        return html_

    def accuracy(self) -> str:
        d, au = self.d, self.d.audit
        if au is None or not au.n or au.accuracy is None:
            return ("<p>No audit answers yet. Each review batch holds a few images drawn at random (purpose "
                    "<code>audit</code>, more often where the model is unsure, each with a recorded probability); "
                    "once they are answered, the next round estimates here how many auto labels are right.</p>")
        whose = "this round's" if au.round == d.round else f"round {au.round}'s" if au.round is not None else "the"
        out = (f'<div class="big"><div><b>{pct(au.accuracy)}</b>estimated accuracy</div>'
               f"<div><b>{interval_text(au.interval)}</b>95% interval</div><div><b>{au.n}</b>audited (n)</div></div>"
               f"<p>Of {esc(whose)} auto labels, checked against people's answers on the random audit items (drawn "
               f"before anything else was selected, each with a known probability, and weighted back by it, so "
               f"unbiased)" + (f": {esc(au.text)}" if au.text else "") + ".</p>")
        if au.bands:
            out += ("<h3>Where the errors are</h3><p>The estimate is the model's own expectation over today's auto "
                    "labels (the mean of their confidences), corrected by how far the audit found it off: the mean of "
                    "(right − confidence) over the audit items, each weighted by the inverse of its probability of "
                    "being drawn. The audit draws uncertain labels more often, because that is where errors hide. "
                    "By confidence band: the errors people found on the audit items against the errors the model "
                    "expected there (the sum of 1 - confidence).</p>"
                    + self.table(["confidence band", "auto labels today", "errors the model expects there",
                                  "audit items", "errors the model expected there", "errors people found"],
                                 [[f"{lo:.3g}–{hi:.3g}", str(int(n)), f"{m:.1f}", str(int(a)), f"{e:.1f}", str(int(k))]
                                  for lo, hi, n, m, a, e, k in au.bands], {1, 2, 3, 4, 5}))
        counts = np.bincount(d.table.label[(~d.table.human) & (d.table.label >= 0)], minlength=len(d.classes))
        rows = []
        # Every label, up to MAX_LABEL_ROWS: then those audited and the most frequent.
        listed = list(range(len(d.classes)))
        if len(listed) > MAX_LABEL_ROWS:
            listed = sorted(sorted(listed, key=lambda k: (-au.by_label.get(d.classes[k], [0, 0])[1], -counts[k]))
                            [:MAX_LABEL_ROWS])
        for k in listed:
            name = d.classes[k]
            c, n = au.by_label.get(name, [0, 0])
            rows.append([esc(name), str(int(counts[k])), str(n), str(c), pct(c / n) if n else "–",
                         interval_text(au.label_interval(c, n)) if n else "–"])
        for name in sorted(set(au.by_label) - set(d.classes)):
            c, n = au.by_label[name]
            rows.append([esc(name) + ' <span class="muted">(no longer a label)</span>', "0", str(n), str(c),
                         pct(c / n) if n else "–", interval_text(au.label_interval(c, n)) if n else "–"])
        if len(listed) < len(d.classes):
            rows.append([f'<span class="muted">… and {len(d.classes) - len(listed)} more labels</span>', "", "", "",
                         "", ""])
        out += ("<h3>Per label</h3><p class=\"muted\">By the label the model gave; intervals: Clopper-Pearson "
                "95%. Few audited items give wide intervals.</p>"
                + self.table(["label", "auto labels now", "audited n", "correct", "estimate", "95% interval"], rows,
                             {1, 2, 3, 4}))
        return out

    def curve_svg(self, fit: tuple[float, float] | None) -> str:
        pts, target = self.d.curve, self.d.target_accuracy
        W, H, L, R, T, B = 640, 260, 52, 16, 14, 40
        xmax: float = max([p.human_labels for p in pts] + [1])
        projected = projection(pts, target)
        if projected is not None and projected[0] is not None and projected[0] <= 4 * xmax:
            xmax = max(xmax, projected[0])
        xmax = xmax * 1.05

        def X(v):
            return L + (W - L - R) * v / xmax

        def Y(v):
            return T + (H - T - B) * (1 - v)

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
                 f'role="img" aria-label="learning curve">']
        for v in (0, 0.25, 0.5, 0.75, 1.0):
            parts.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e3e6ec"/>'
                         f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{pct(v, 0)}</text>')
        for v in nice_ticks(xmax):
            parts.append(f'<line x1="{X(v):.1f}" x2="{X(v):.1f}" y1="{Y(0):.1f}" y2="{Y(0) + 4:.1f}" stroke="#667085"/>'
                         f'<text x="{X(v):.1f}" y="{H - B + 16}" text-anchor="middle">{v:,}</text>')
        parts.append(f'<text x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">human labels</text>')
        parts.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(target):.1f}" y2="{Y(target):.1f}" stroke="#2f9e44" '
                     f'stroke-dasharray="5 4"/><text x="{W - R}" y="{Y(target) - 4:.1f}" text-anchor="end" '
                     f'style="fill:#2f9e44">target {pct(target, 0)}</text>')
        if fit is not None:
            a, b = fit
            xs = np.linspace(max(1.0, min(p.human_labels for p in pts if p.human_labels > 0)), xmax, 40)
            ys = 1 - np.exp(a + b * np.log(xs))
            line = " ".join(f"{X(x):.1f},{Y(min(1.0, max(0.0, y))):.1f}" for x, y in zip(xs, ys))
            parts.append(f'<polyline points="{line}" fill="none" stroke="#7c8db5" stroke-dasharray="2 3"/>')
        for p in pts:
            x = X(p.human_labels)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{Y(p.high):.1f}" y2="{Y(p.low):.1f}" '
                         f'stroke="#3b5bdb" stroke-width="2"/><circle cx="{x:.1f}" cy="{Y(p.accuracy):.1f}" r="4" '
                         f'fill="#3b5bdb"><title>round {p.audited_round}: {pct(p.accuracy)} '
                         f'({interval_text((p.low, p.high))}, n={p.n}) at {p.human_labels} human labels</title>'
                         f'</circle>')
        parts.append("</svg>")
        return "".join(parts)

    def learning_curve(self) -> str:
        pts = self.d.curve
        if not pts:
            return ("<p>No audited round yet: each point is one round's auto labels, checked on its random audit "
                    "sample once answered, against the human labels it had.</p>")
        fit = fit_curve(pts)
        rows = [[str(p.audited_round), str(p.human_labels), pct(p.accuracy), interval_text((p.low, p.high)), str(p.n)]
                for p in pts]
        return (f"<p>Accuracy of each round's auto labels (its audit estimate and 95% interval) against the human "
                f"labels it was made with; dashed: a fit of the error as a power of the human labels.</p>"
                f"{self.curve_svg(fit)}"
                + self.table(["round audited", "human labels then", "estimate", "95% interval", "n"], rows,
                             {0, 1, 2, 4}))

    def review(self) -> str:
        d = self.d
        if not d.batch:
            return f"<p>No review batch for round {d.round} (data/review/round-{d.round:03d}.batch.csv).</p>"
        purposes: dict[str, int] = {}
        for b in d.batch:
            purposes[b.get("purpose", "")] = purposes.get(b.get("purpose", ""), 0) + 1
        listed = ", ".join(f"{n} {esc(k)}" for k, n in sorted(purposes.items()))
        out = (f"<p>{len(d.batch)} images to answer ({listed}): fill in the <code>label</code> column of "
               f"<code>data/review/round-{d.round:03d}.csv</code> and drop it into <code>data/inbox/</code> (or "
               f"answer them in Label Studio). The model's suggestion is what it would label each image; the "
               f"thumbnails are in each label's section below.</p>")
        rows = []
        for b in d.batch[:MAX_REVIEW_ROWS]:
            try:
                conf = pct(float(b.get("confidence", "")))
            except ValueError:
                conf = "–"
            rows.append([esc(b.get("image", "")), esc(b.get("purpose", "")), esc(b.get("predicted_label", "")),
                         conf, esc(b.get("note", ""))])
        more = (f'<p class="muted">… and {len(d.batch) - MAX_REVIEW_ROWS} more in the batch file.</p>'
                if len(d.batch) > MAX_REVIEW_ROWS else "")
        return (out + f"<details><summary>the {len(d.batch)} items</summary>"
                + self.table(["image", "purpose", "model's suggestion", "confidence", "note"], rows, {3})
                + more + "</details>")

    def proposals(self) -> str:
        """The classes this round proposed (tasks/discover.py): each with its most typical members."""
        d = self.d
        unknown = sum(1 for label in d.humans.values() if label == UNKNOWN_LABEL)
        head = (f"<p>{unknown} image(s) answered <b>none of these</b> (<code>unknown</code>) so far; the images that "
                f"look unlike every class (answered so, labeled <code>unknown</code>, or unsure) are clustered each "
                f"round, and the coherent clusters are proposed as classes.</p>")
        if d.proposed_names:
            head += "<p>Classes people proposed (<code>new:NAME</code> answers): " + ", ".join(
                f"{esc(n)} ({k})" for n, k in sorted(d.proposed_names.items())) + ".</p>"
        if not d.proposals:
            return head + "<p>No class proposed this round.</p>"
        parts = [head]
        for p in d.proposals:
            names = ", ".join(f"{esc(n)} ({s:.2f})" for n, s in p.names) or "none (needs real text weights)"
            near = f"{esc(p.nearest_class)} (cosine {p.nearest_class_cosine:.2f})" if p.nearest_class else "–"
            boxes = p.boxes or [""] * len(p.paths)  # regions: the mask's box drawn on its image
            figs = "".join(self.figure(path, esc(path.rsplit('/', 1)[-1]), box=box) for path, box in zip(p.paths, boxes))
            suggested = p.suggested or "NAME"
            what = "regions (SAM masks)" if p.kind == "regions" else "images"
            parts.append(
                f'<div class="label"><h3>Proposal {p.id}: {p.size} {what}</h3><p>cohesion {p.cohesion:.2f} · '
                f"{p.unknown_answers} answered none of these · {p.predicted_unknown} labeled unknown · nearest "
                f"class {near} · suggested names: {names}</p><div class=\"strip\">{figs}</div>"
                f"<p class=\"muted\">Adopt it: <code>coldstart discover -w . --adopt {p.id} --name "
                f"{esc(suggested)} --description \"a photo of ...\"</code></p></div>")
        return "".join(parts)

    def labels(self) -> str:
        d, t = self.d, self.d.table
        L = len(d.classes)
        counts = np.bincount(t.label[t.label >= 0], minlength=L) if len(t.label) else np.zeros(L, int)
        shown = sorted(range(L), key=lambda k: -counts[k])[:MAX_LABEL_SECTIONS] if L > MAX_LABEL_SECTIONS \
            else list(range(L))
        k_strip = max(1, min(STRIP, (MAX_THUMBS // 3) // max(1, 2 * len(shown))))
        # The auto labels sorted by (label, confidence): each label's ends, without a pass per label.
        auto = np.flatnonzero((~t.human) & (t.label >= 0))
        order = auto[np.lexsort((t.confidence[auto], t.label[auto]))]
        starts = np.searchsorted(t.label[order], np.arange(L + 1))
        where = t.find(sorted({f.get("image_id", "") for f in d.flags}))
        by_label = self._label_items(shown)
        defect_set = {d.classes.index(c) for c in d.defect_labels if c in d.classes}
        # Thumbnails are given out in this order (the budget may run out): what to act on first.
        review_figs = {k: [self.review_figure(b) for b in v["review"]] for k, v in by_label.items()}
        flag_figs = {k: [self.flag_figure(f, where) for f in v["flags"]] for k, v in by_label.items()}
        defect_figs = {k: self.defect_figures(k, order[starts[k]:starts[k + 1]]) if k in defect_set else []
                       for k in shown}
        strips = {k: self._strips(order[starts[k]:starts[k + 1]], k_strip) for k in shown}
        toc = " · ".join(f'<a href="#label-{k}">{esc(d.classes[k])}</a>' for k in shown)
        out = [f"<p>Per label: the auto labels the model is surest and least sure of, the review items it suggests "
               f"this label for, the human labels of this label it disputes (data/labels/flags.csv), and for defect "
               f"classes the located defect drawn on the image.</p><p>{toc}</p>"]
        if L > len(shown):
            out.append(f'<p class="note">{L} labels: the {len(shown)} most frequent have a section here; the '
                       f"accuracy table above lists every label.</p>")
        for k in shown:
            out.append(self._label_section(k, int(counts[k]), strips[k], review_figs[k], flag_figs[k], defect_figs[k]))
        return "".join(out)

    def _class_index(self, name: object) -> int:
        """A label's index in the classes, -1 for none of them: batch and flag rows name labels
        as text, and may name one the ontology no longer has."""
        return self.d.classes.index(name) if isinstance(name, str) and name in self.d.classes else -1

    def _label_items(self, shown: list[int]) -> dict[int, dict[str, list[dict]]]:
        """Per shown label, the review items suggested as it and the human labels of it the model
        disputes, each capped: they open its section, so they are picked before the strips."""
        d = self.d
        shown_set = set(shown)
        by_label: dict[int, dict[str, list[dict]]] = {k: {"review": [], "flags": []} for k in shown}
        for b in d.batch:
            k = self._class_index(b.get("predicted_label"))
            if k in shown_set and len(by_label[k]["review"]) < PER_LABEL_REVIEW:
                by_label[k]["review"].append(b)
        for f in d.flags:
            k = self._class_index(f.get("human_label"))
            if k in shown_set and len(by_label[k]["flags"]) < PER_LABEL_FLAGS:
                by_label[k]["flags"].append(f)
        return by_label

    def _strips(self, rows: np.ndarray, k_strip: int) -> tuple[list[str], list[str]]:
        """One label's most and least confident auto labels as thumbnails (``rows``: its auto
        labels, least confident first), most confident first: they take the budget in that order."""
        t = self.d.table
        most = t.rows(rows[::-1][:k_strip])
        least = t.rows(rows[:k_strip]) if len(rows) > k_strip else []
        return ([self.figure(r["path"], pct(r["confidence"]), f"{r['path']}: {pct(r['confidence'])}") for r in most],
                [self.figure(r["path"], pct(r["confidence"]), f"{r['path']}: {pct(r['confidence'])}") for r in least])

    def _label_section(self, k: int, count: int, strips: tuple[list[str], list[str]], review_figs: list[str],
                       flag_figs: list[str], defect_figs: list[str]) -> str:
        """One label's section: its counts and audited accuracy, then its thumbnails by kind."""
        d, t, au = self.d, self.d.table, self.d.audit
        name = d.classes[k]
        human = int(np.count_nonzero(t.human & (t.label == k)))
        acc = ""
        if au is not None and name in au.by_label and au.by_label[name][1]:
            c, n = au.by_label[name]
            acc = f"; audited {pct(c / n)} ({interval_text(au.label_interval(c, n))}, n={n})"
        most, least = strips
        block = [f'<div class="label" id="label-{k}" data-label="{esc(name)}"><h3>{esc(name)}</h3>'
                 f'<p class="muted">{count} images: {human} human, {count - human} auto'
                 f"{esc(acc)}</p>"]
        block.append("<h4>most confident auto labels</h4>" + (f'<div class="strip">{"".join(most)}</div>'
                                                               if most else '<p class="muted">none</p>'))
        if least:
            block.append(f'<h4>least confident auto labels</h4><div class="strip">{"".join(least)}</div>')
        if review_figs:
            block.append(f'<h4>in the review batch, suggested as {esc(name)}</h4>'
                         f'<div class="strip">{"".join(review_figs)}</div>')
        if flag_figs:
            block.append(f'<h4>human labels “{esc(name)}” the model disputes</h4>'
                         f'<div class="strip">{"".join(flag_figs)}</div>')
        if defect_figs:
            block.append(f'<h4>located defects (box: the winning tile; red: the SAM mask, where there is one)'
                         f'</h4><div class="strip">{"".join(defect_figs)}</div>')
        block.append("</div>")
        return "".join(block)

    def review_figure(self, b: dict) -> str:
        try:
            conf = pct(float(b.get("confidence", "")))
        except ValueError:
            conf = "–"
        caption = f"{esc(b.get('purpose', ''))} · {conf}"
        title = f"{b.get('image', '')}: suggested {b.get('predicted_label', '')} ({conf}), {b.get('purpose', '')}"
        if b.get("note"):
            title += f"; {b['note']}"
        return self.figure(b.get("image", ""), caption, title)

    def flag_figure(self, f: dict, where: dict[str, int]) -> str:
        row = where.get(f.get("image_id", ""))
        path = self.d.table.path[row].as_py() if row is not None else ""
        try:
            p = pct(float(f.get("probability", "")))
        except ValueError:
            p = "–"
        caption = f"model: {esc(f.get('suggested_label', ''))} {p}"
        title = (f"{path}: labeled {f.get('human_label', '')} by a person; the held-out model says "
                 f"{f.get('suggested_label', '')} ({p}); flagged in round {f.get('round', '')}")
        return self.figure(path, caption, title)

    def defect_figures(self, k: int, rows: np.ndarray) -> list[str]:
        """The label's most confident images with a location (masks first, where SAM gave one)."""
        t, d = self.d.table, self.d
        located = [int(r) for r in rows[::-1][t.located[rows[::-1]]][:50]]
        picked = sorted(located, key=lambda r: t.image_id[r].as_py() not in d.defects)[:PER_LABEL_DEFECTS]
        out = []
        for r in t.rows(picked):
            mask = d.defects.get(r["image_id"])
            out.append(self.figure(r["path"], f"{pct(r['confidence'])}{' · mask' if mask else ''}",
                                   f"{r['path']}: {pct(r['confidence'])}, tile {r['location']}", size=DEFECT_PX,
                                   box=r["location"], rle=mask["rle"] if mask else None))
        return out

    def confusion(self) -> str:
        d = self.d
        cm = d.train.get("confusion")
        if not cm:
            return ("<p>No held-out predictions yet: the confusion matrix appears once a probe or zero-shot head is "
                    "scored on human labels (rows: the human label, columns: the out-of-fold prediction).</p>")
        cm = np.asarray(cm, dtype=int)
        names = d.classes if len(d.classes) == len(cm) else [str(i) for i in range(len(cm))]
        total, right = int(cm.sum()), int(np.trace(cm))
        head = (f"<p>{total} human labels, each predicted by a model that did not see it (out-of-fold, the "
                f"{esc(d.train.get('model', ''))} head): {right} right ({pct(right / total if total else None)}). "
                f"Rows: the human label; columns: the prediction.</p>")
        if len(cm) > MAX_CONFUSION:
            off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j]]
            rows = [[esc(names[i]), esc(names[j]), str(c)] for c, i, j in sorted(off, reverse=True)[:40]]
            return head + "<h3>Most confused pairs</h3>" + self.table(["human label", "predicted", "count"], rows, {2})
        peak = max(1, int(cm.max()))
        th = "".join(f'<th class="r">{esc(n)}</th>' for n in names)
        body = []
        for i, n in enumerate(names):
            cells = []
            for j in range(len(names)):
                v = int(cm[i, j])
                a = 0.08 + 0.8 * v / peak if v else 0
                color = "59,91,219" if i == j else "224,49,49"
                fg = "#fff" if a > 0.5 else "#1d2330"
                style = f' style="background:rgba({color},{a:.2f});color:{fg}"' if v else ""
                cells.append(f"<td{style}>{v or ''}</td>")
            body.append(f"<tr><th>{esc(n)}</th>{''.join(cells)}</tr>")
        return head + f'<table class="cm"><thead><tr><th></th>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>'

    def calibration(self) -> str:
        d, tr = self.d, self.d.train
        temp, before, after = tr.get("temperature"), tr.get("ece_before"), tr.get("ece_after")
        out = ('<div class="big">'
               f"<div><b>{pct(before)}</b>ECE before temperature scaling</div>"
               f"<div><b>{pct(after)}</b>ECE after</div>"
               f"<div><b>{'–' if temp is None else f'{float(temp):.2f}'}</b>temperature</div></div>"
               "<p>Expected calibration error of the chosen head on the held-out human labels (out-of-fold), before "
               "and after the fitted temperature; every auto label's confidence is after it.</p>")
        rel = d.reliability
        if not rel:
            return out + ("<p>Reliability diagram: no answered audit item yet (it compares the confidence each "
                          "audited auto label was given with how often people agreed).</p>")
        conf = np.array([c for c, _ in rel])
        ok = np.array([o for _, o in rel], dtype=float)
        edges = np.linspace(0, 1, 11)
        bins = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            m = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
            bins.append((lo, hi, int(m.sum()), float(ok[m].mean()) if m.any() else None,
                         float(conf[m].mean()) if m.any() else None))
        ece = sum(n / len(rel) * abs(a - c) for _, _, n, a, c in bins if a is not None and c is not None)  # n > 0
        W, H, L, R, T, B = 360, 300, 48, 12, 12, 44

        def X(v):
            return L + (W - L - R) * v

        def Y(v):
            return T + (H - T - B) * (1 - v)

        svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
               f'aria-label="reliability diagram">']
        for v in (0, 0.5, 1.0):
            svg.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#e3e6ec"/>'
                       f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{pct(v, 0)}</text>'
                       f'<text x="{X(v):.1f}" y="{H - B + 16}" text-anchor="middle">{pct(v, 0)}</text>')
        for lo, hi, n, a, c in bins:
            if n:
                svg.append(f'<rect x="{X(lo) + 1:.1f}" y="{Y(a):.1f}" width="{X(hi) - X(lo) - 2:.1f}" '
                           f'height="{Y(0) - Y(a):.1f}" fill="#3b5bdb" fill-opacity="0.75"><title>confidence '
                           f'{pct(lo, 0)}–{pct(hi, 0)}: {pct(a)} right of {n}</title></rect>'
                           f'<line x1="{X(lo) + 1:.1f}" x2="{X(hi) - 1:.1f}" y1="{Y(c):.1f}" y2="{Y(c):.1f}" '
                           f'stroke="#f08c00" stroke-width="2"/>'
                           f'<text x="{(X(lo) + X(hi)) / 2:.1f}" y="{min(Y(a), Y(c)) - 4:.1f}" '
                           f'text-anchor="middle">n={n}</text>')
        svg.append(f'<line x1="{X(0)}" y1="{Y(0)}" x2="{X(1)}" y2="{Y(1)}" stroke="#e03131" stroke-dasharray="4 3"/>'
                   f'<text x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">confidence given</text></svg>')
        rows = [[f"{pct(lo, 0)}–{pct(hi, 0)}", str(n), pct(c), pct(a)] for lo, hi, n, a, c in bins if n]
        return out + (f"<h3>Reliability on the audit items</h3><p>{len(rel)} answered audit items of earlier rounds "
                      f"(random, held out): bars are how often people agreed with the auto label, per bin of the "
                      f"confidence it was given (orange: the bin's mean confidence); the dashed line is perfect "
                      f"calibration. ECE on them: {pct(ece)}.</p>"
                      f'<div style="display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start">{"".join(svg)}'
                      + self.table(["confidence", "n", "mean confidence", "people agreed"], rows, {1, 2, 3})
                      + "</div>")

    def economics(self) -> str:
        d, t = self.d, self.d.table
        e = economics(d)
        src = (f"{e['measured_labels']} of them timed by Label Studio (lead_time, {e['measured_seconds'] / 3600:.2f} h "
               f"in all), the other {e['assumed_labels']} at report.seconds_per_label = {d.seconds_per_label:g} s"
               if e["measured_labels"] else
               f"at report.seconds_per_label = {d.seconds_per_label:g} s each (no Label Studio lead_time for them)")
        rows = [["human labels", str(e["human"])],
                ["time they took", f"{e['human_seconds'] / 3600:.2f} h ({esc(src)})"],
                ["seconds per label", f"{e['rate']:.1f} s"],
                ["to label every image by hand at that rate", f"{e['all_seconds'] / 3600:.2f} h ({len(t.label)} images)"],
                ["hours saved", f"{e['saved_seconds'] / 3600:.2f} h"],
                [f"human labels to reach {pct(d.target_accuracy, 0)} (report.target_accuracy)", esc(e["projection"])]]
        return (self.table(None, rows) +
                "<p class=\"muted\">Hours saved: the time to label every image by hand at the measured (or assumed) "
                "rate, less the time the human labels took. The projection extrapolates the learning curve (error "
                "as a power of the human labels, weighted by each point's n); it is a rough guide.</p>")

    def render(self) -> str:
        d = self.d
        body = {"counts": self.counts(), "accuracy": self.accuracy(), "learning-curve": self.learning_curve(),
                "review": self.review(), "proposals": self.proposals(), "confusion": self.confusion(), "calibration": self.calibration(),
                "economics": self.economics()}
        body["labels"] = self.labels()  # last: the budget goes to the review and flags first (inside it)
        nav = "".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in SECTIONS.items())
        notes = "".join(f'<p class="note">{esc(n)}</p>' for n in d.notes)
        if self.thumbs.left_out:
            notes += (f'<p class="note">{self.thumbs.left_out} thumbnail(s) not shown (unreadable, or over the '
                      f"report's cap of {self.thumbs.max_count} images / {self.thumbs.max_bytes // 1000} kB).</p>")
        sections = "".join(f'<section id="{k}"><h2>{esc(v)}</h2>{body[k]}</section>' for k, v in SECTIONS.items())
        title = f"coldstart round {d.round} · {d.workspace}"
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
                "style-src 'unsafe-inline'\">"
                f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
                f"<style>{CSS}</style></head><body><header><h1>{esc(title)}</h1>"
                f"<p>{len(d.table.label)} images · {len(d.classes)} labels · auto labels by {esc(d.model)}</p>"
                f"<nav>{nav}</nav></header><main>{notes}{sections}</main></body></html>\n")


def nice_ticks(top: float, most: int = 8) -> list[int]:
    """0 and multiples of a round step (1, 2 or 5 times a power of ten) up to ``top``: at most
    ``most`` ticks."""
    k, step = 0, 1
    while top / step >= most:
        k += 1
        step = (1, 2, 5)[k % 3] * 10 ** (k // 3)
    return list(range(0, int(top) + 1, step))
