"""Zero-shot classification: class text weights from an ontology, probabilities from embeddings."""

from __future__ import annotations

import numpy as np

from models.clip import ClipModel


def class_text_weights(clip: ClipModel, classes: dict[str, list[str]], templates: list[str]) -> np.ndarray:
    """Text weights ``(C, D)`` float32, rows in ``classes`` order, each L2-normalised.

    Row c = normalise(mean over templates x descriptions of the normalised prompt embedding):
    the prompt ensembling of the CLIP paper, as open_clip's ``build_zero_shot_classifier``.
    """
    rows = []
    for descriptions in classes.values():
        prompts = [t.format(d) for d in descriptions for t in templates]
        emb = clip.encode_text(prompts).mean(axis=0)
        rows.append(emb / np.linalg.norm(emb))
    return np.stack(rows).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def zero_shot_probs(embeddings: np.ndarray, weights: np.ndarray, logit_scale: float) -> np.ndarray:
    """``(N, D)`` unit embeddings x ``(C, D)`` weights -> ``(N, C)`` softmax(scale * cosine)."""
    return softmax(logit_scale * (embeddings.astype(np.float32) @ weights.T))
