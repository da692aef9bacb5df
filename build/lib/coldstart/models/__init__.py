"""Model code: the CLIP adapter, zero-shot head, linear probe. No Prefect, no MLflow here."""
