#!/bin/sh
# As eclipse-mosquitto's: started as root, hand /mosquitto to the broker's user first.
set -e
if [ "$(id -u)" = "0" ]; then
    [ -d /mosquitto ] && chown -R mosquitto:mosquitto /mosquitto || true
fi
exec "$@"
