"""Zero-shot classification: text weights from prompts, label probabilities from embeddings.

Shapes: ``S`` scoring classes (rows of the text-weight matrix, the classes as the ontology
writes them), ``L`` labels (what is stored: negative classes share one label), ``D`` embedding
dimension, ``N`` images.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # keep this module importable without torch (streaming re-labels)
    from coldstart.models.clip import ClipModel

log = logging.getLogger(__name__)


def text_weights(clip: ClipModel, prompts: list[list[str]]) -> np.ndarray:
    """``(S, D)`` float32: row s = normalise(mean of the normalised embeddings of prompts[s]).

    The prompt ensembling of the CLIP paper, as open_clip's ``build_zero_shot_classifier``.
    All prompts go through the text tower in one batched call.
    """
    flat = [p for group in prompts for p in group]
    emb = clip.encode_text(flat)
    rows, start = [], 0
    for group in prompts:
        mean = emb[start : start + len(group)].mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
        start += len(group)
    return np.stack(rows).astype(np.float32)


def class_text_weights(clip: ClipModel, classes: dict[str, list[str]], templates: list[str]) -> np.ndarray:
    """``(C, D)`` weights for ``classes`` (name -> descriptions), every template x description."""
    return text_weights(clip, [[t.format(d) for d in descs for t in templates] for descs in classes.values()])


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def zero_shot_probs(embeddings: np.ndarray, weights: np.ndarray, logit_scale: float) -> np.ndarray:
    """``(N, D)`` unit embeddings x ``(C, D)`` weights -> ``(N, C)`` softmax(scale * cosine)."""
    return softmax(logit_scale * (embeddings.astype(np.float32, copy=False) @ weights.T))


def to_labels(probs: np.ndarray, label_of_class: np.ndarray, n_labels: int) -> np.ndarray:
    """``(N, S)`` class probabilities -> ``(N, L)`` label probabilities (negatives summed)."""
    if len(label_of_class) == n_labels and np.array_equal(label_of_class, np.arange(n_labels)):
        return probs
    out = np.zeros((len(probs), n_labels), dtype=probs.dtype)
    for s, label in enumerate(label_of_class):
        out[:, label] += probs[:, s]
    return out


@dataclass
class ZeroShotHead:
    """Text weights ``(S, D)`` plus the scoring-class -> label map: the round's zero-shot model."""

    weights: np.ndarray
    label_of_class: np.ndarray  # (S,) int
    n_labels: int
    logit_scale: float

    def class_probs(self, X: np.ndarray) -> np.ndarray:
        return zero_shot_probs(X, self.weights, self.logit_scale)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, D)`` -> ``(N, L)``."""
        return to_labels(self.class_probs(X), self.label_of_class, self.n_labels)

    def label_weights(self) -> np.ndarray:
        """``(L, D)`` logit_scale x unit text direction per label (negatives: their mean), the
        starting point and prior of the zero-shot-initialised probe; zero for a label no class
        describes ("none of these": the probe learns it from people's answers alone)."""
        rows = []
        for label in range(self.n_labels):
            mine = self.label_of_class == label
            w = self.weights[mine].mean(0) if mine.any() else np.zeros(self.weights.shape[1], self.weights.dtype)
            norm = np.linalg.norm(w)
            rows.append(w / norm if norm > 0 else w)
        return (self.logit_scale * np.stack(rows)).astype(np.float32)


def confusable_pairs(weights: np.ndarray, names: list[str], threshold: float) -> list[tuple[str, str, float]]:
    """Pairs of classes whose text embeddings have cosine >= threshold (likely confused)."""
    sim = weights @ weights.T
    i, j = np.triu_indices(len(names), k=1)
    hit = sim[i, j] >= threshold
    return sorted(((names[a], names[b], float(sim[a, b])) for a, b in zip(i[hit], j[hit])), key=lambda t: -t[2])


def _non_latin(text: str) -> bool:
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith(("LATIN", "GREEK")) for ch in text)


def english_only_tokenizer(clip: "ClipModel") -> bool:
    from open_clip.tokenizer import SimpleTokenizer

    return isinstance(clip.tokenizer, SimpleTokenizer)


MULTILINGUAL_HINT = ("use a multilingual open_clip model, e.g. model.name: xlm-roberta-base-ViT-B-32 with "
                     "model.pretrained: laion5b_s13b_b90k, or nllb-clip-base (pip install 'coldstart[multilingual]'; "
                     "offline, its tokenizer must already be in the Hugging Face cache)")


def _has_cjk(text: str) -> bool:
    return any(unicodedata.name(ch, "").startswith("CJK UNIFIED IDEOGRAPH") for ch in text)


def prompt_warnings(model_id: str, english_only: bool, names: list[str], prompts: list[list[str]],
                    weights: np.ndarray, threshold: float, descriptions: list[list[str]] | None = None) -> list[str]:
    """Human-readable warnings about an ontology for a model (also logged). ``english_only``:
    the model reads text with the English-only CLIP tokenizer (``english_only_tokenizer``).
    A Chinese-CLIP model (id ``cn_clip/...``) was trained on Chinese text: the class
    ``descriptions`` (default: the prompts) with no Chinese character are warned about then."""
    warnings = []
    if model_id.startswith("cn_clip/"):
        for name, group in zip(names, descriptions or prompts):
            bad = [p for p in group if not _has_cjk(p)]
            if bad:
                warnings.append(f"class {name!r}: description {bad[0]!r} has no Chinese character, but {model_id} "
                                f"is Chinese-CLIP, trained on Chinese text, so it scores English poorly; describe "
                                f"the class in Chinese (a class may have descriptions in both languages)")
    if english_only:
        for name, group in zip(names, prompts):
            bad = [p for p in group if _non_latin(p)]
            if bad:
                warnings.append(f"class {name!r}: prompt {bad[0]!r} is not in Latin script, but {model_id} "
                                f"reads text with the English-only CLIP tokenizer, so its score is close to "
                                f"meaningless; {MULTILINGUAL_HINT}")
    for a, b, cos in confusable_pairs(weights, names, threshold):
        warnings.append(f"classes {a!r} and {b!r} are nearly identical to the model (text cosine {cos:.3f} >= "
                        f"{threshold}): expect them to be confused; describe them more differently or merge them")
    for w in warnings:
        log.info("%s", w)  # the CLI prints them in its summary; logging them loudly would say it twice
    return warnings
