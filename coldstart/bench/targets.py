"""Every benchmark target, defined once: the benches, `bench all` and BENCHMARKS.md read them here."""

from __future__ import annotations

import operator
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    key: str  # the figure's key in the bench's JSON
    what: str
    op: str  # ">=" or "<="
    value: float

    def met(self, measured: float) -> bool:
        """Whether ``measured`` meets the target."""
        return {">=": operator.ge, "<=": operator.le}[self.op](measured, self.value)

    def line(self, measured: float) -> str:
        """The target's report line: what, measured, the bound, met or NOT MET."""
        return (f"  {self.what:44s} {measured:10.3f}   {self.op} {self.value:<8g} "
                f"{'met' if self.met(measured) else 'NOT MET'}")


TARGETS = {t.key: t for t in (
    Target("embed_vs_forward", "embed stage / bare forward pass", ">=", 0.85),
    Target("embed_vs_naive", "embed stage / naive loop", ">=", 5.0),
    Target("relabel_1m_s", "relabel stage, 1M x 512-d, 10 classes (s)", "<=", 2.0),
    Target("peak_rss_mb", "relabel stage peak RSS (MB)", "<=", 1536.0),
    Target("labels_to_95", "labels to 95% of full-pool accuracy (coldstart)", "<=", 50.0),
    Target("audit_coverage", "audit 95% interval covers the true accuracy", ">=", 0.95),
    Target("train_s", "train stage, 1,797 images, 100 labels (s)", "<=", 5.0),
    Target("precision_speedup", "precision: fp32 / best image tower (x)", ">=", 2.0),
    Target("precision_agreement", "precision: top-1 agreement of best with fp32", ">=", 0.995),
    Target("precision_min_cosine", "precision: min cosine of best with fp32", ">=", 0.999),
    Target("speedup", "regions: stock SAM generator / ours (x)", ">=", 10.0),
    Target("mask_match", "regions: masks matched both ways (IoU >= 0.9)", ">=", 0.95),
    Target("ours_s_per_img", "regions: ours, 1024x768, vit_t, 16x16 pts (s)", "<=", 3.0),
    Target("big_image_peak_rss_mb", "regions: 8000x6000 image peak RSS (MB)", "<=", 3072.0),
    Target("label_share", "regions: labeling time / segmentation time", "<=", 0.15),
    Target("label_speedup", "regions: naive labeling / ours (x)", ">=", 5.0),
    Target("p50_over_target", "api: 1-client p50 / (1.2 x forward + 20 ms)", "<=", 1.0),
    Target("throughput_ratio", "api: 16 clients / bare batched forward", ">=", 0.8),
    Target("soak_errors", "api: errors in the soak, 16 clients", "<=", 0.0),
    Target("rss_growth", "api: server RSS growth over the soak", "<=", 0.05),
    Target("audit_median_width", "audit 95% interval median width, round >= 4", "<=", 0.06),
    Target("audit_median_width_spot_check", "audit median width, round >= 4, spot-check", "<=", 0.09),
    Target("hidden_recall", "discover: hidden digits with a pure proposal", ">=", 1.0),
    Target("max_proposals", "discover: proposals (most in any seed)", "<=", 4.0),
    Target("known_accuracy_gap", "discover: named digits, full - ours (pts)", "<=", 1.0),
    Target("adopted_accuracy_gap", "discover: after adopting, full - ours (pts)", "<=", 2.0),
)}
