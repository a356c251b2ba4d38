"""The poller service: HomeWizard devices → measurements, house surplus, availability (MQTT)."""
