"""The dashboard: the plan, the prices and the house on one live page (`services.dashboard`).

Kept free of imports: `hwsched status` uses `services.dashboard.state` and `.terminal`
without the web server's dependencies.
"""
