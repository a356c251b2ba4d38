"""The forecaster's tests run apart from the main suite: `make test-forecaster` (in `make test`).

`island/` needs quartz-solar-forecast (`.venv-forecaster/bin/pytest tests/forecaster/island`),
`service/` the main environment plus the island's python for its end-to-end test
(`.venv/bin/pytest tests/forecaster/service`). A plain `pytest` (testpaths = tests) leaves both
out; naming the directory on the command line collects it.
"""

collect_ignore = ["island", "service"]
