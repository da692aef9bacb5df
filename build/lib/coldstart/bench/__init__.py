"""Benchmarks: each one times the code users run (the production stages), every target defined once."""
