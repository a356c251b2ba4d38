# A STAND-IN for python:3.11.14-slim-bookworm, for machines that cannot reach Docker Hub (CI
# here): Debian bookworm (a debootstrap minbase root file system, `docker import`ed by
# docker/images.py) with Debian's own Python 3.11 (python3, venv, pip), laid out as the
# official image is where the hwsched Dockerfile looks: `python` and `pip` on the PATH, pip
# free to install, CA certificates, UTF-8. Not the official image: Debian's python3 is
# 3.11.2, not 3.11.14. The real base stays the default of docker/Dockerfile's PYTHON_IMAGE.
ARG DEBIAN_IMAGE
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip
CMD ["python3"]
