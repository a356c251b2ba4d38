"""The bridge: Home Assistant discovery and each socket's next planned on-time."""
