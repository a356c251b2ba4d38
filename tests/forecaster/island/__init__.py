"""Tests of the model worker, run with the island's pytest (.venv-forecaster)."""
