"""The actuator service: commands, overrides and a local fallback → Energy Sockets (MQTT)."""
