"""Prefect flows and the command line: what a round is, in what order."""
