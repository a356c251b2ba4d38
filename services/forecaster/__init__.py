"""The forecaster: a quartz-solar-forecast forecast per PV array, combined into one house forecast.

Two processes, two environments (quartz-solar-forecast 1.2.12 pins pydantic 2.6.2, older than
what `shared.config` and `shared.service` need):

* `forecaster.py` (the service, main environment): MQTT, schedule, retries, fallback, the
  `Forecast` message. It starts the worker for each forecast run.
* `worker.py` (the model, `.venv-forecaster`): quartz's own data, feature and model code, with
  the weather fetched from a configurable Open-Meteo-compatible base URL. One JSON request on
  stdin, one JSON answer on stdout (`protocol.py`), then it exits, so its memory is given back.

Nothing here imports anything at package level: the worker imports this package too.
"""
