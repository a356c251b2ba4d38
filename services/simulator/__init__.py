"""The simulated house: HomeWizard devices, solar panels and weather, with no hardware.

`house.py` is the physics (pure), `weather.py` the Open-Meteo-compatible weather (pure),
`server.py` serves both over HTTP/HTTPS on 127.0.0.1, `main.py` is the command line.
"""
