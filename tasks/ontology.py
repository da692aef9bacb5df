"""Facts derived from the ontology (params.yaml ``ontology``) that several stages share."""

from __future__ import annotations

from coldstart.tasks.config import OntologyConfig


def negative_labels(ontology: OntologyConfig) -> set[str]:
    """The labels a region is dropped for: ``negative_label`` when some class is negative."""
    return {ontology.negative_label} if any(spec.negative for spec in ontology.classes.values()) else set()
