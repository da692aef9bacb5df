"""coldstart: a first labeled image dataset without a first labeled dataset.

Filled in below (public API).
"""
