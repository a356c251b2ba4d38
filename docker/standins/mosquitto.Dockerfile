# A STAND-IN for eclipse-mosquitto:2.0.22, for machines that cannot reach Docker Hub (CI
# here): Debian bookworm's mosquitto (2.0.11) and mosquitto-clients, laid out as the
# official image is: user and group `mosquitto` with uid/gid 1883, /mosquitto/{config,data,log}
# owned by it, the same entry point (it chowns /mosquitto when started as root), volumes,
# port and command. Not the official image: Debian's build, on Debian instead of Alpine.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
# hadolint ignore=DL3008
RUN groupadd --system --gid 1883 mosquitto \
    && useradd --system --uid 1883 --gid 1883 --no-create-home --home-dir /var/empty \
        --shell /usr/sbin/nologin mosquitto \
    && apt-get update \
    && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 1883 -g 1883 /mosquitto/config /mosquitto/data /mosquitto/log \
    && printf '%s\n' '# The default: no listener configured, so mosquitto 2 listens on localhost only.' \
        > /mosquitto/config/mosquitto.conf
COPY mosquitto-entrypoint.sh /docker-entrypoint.sh
VOLUME ["/mosquitto/data", "/mosquitto/log"]
EXPOSE 1883
ENTRYPOINT ["/docker-entrypoint.sh"]
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
