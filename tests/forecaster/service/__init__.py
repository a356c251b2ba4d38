"""Tests of the forecaster service, run with the main venv's pytest (`make test-forecaster`)."""
