"""The forecaster's tests: `island/` runs in .venv-forecaster, `service/` in the main venv."""
