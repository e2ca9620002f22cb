# syntax=docker/dockerfile:1
# The consultation recorder: one container per consultation, started by an orchestrator
# (a Kubernetes Job, a Cloudflare Container behind a Durable Object) or by hand.
#
#   podman build --format docker -t consultation-recorder .    (docker build works too)
#   podman run --rm -v ./config.toml:/etc/recorder/config.toml:ro \
#     -e BOT_REALTIME_APP_SECRET=... -e BOT_STORAGE_SECRET_ACCESS_KEY=... \
#     consultation-recorder record --config /etc/recorder/config.toml \
#       --consultation-id C --participant p1:clinician=SESSION/TRACK
#
# Settings: /etc/recorder/config.toml (mount your own over the defaults baked in here)
# < BOT_<SECTION>_<KEY> environment variables < flags. Secrets only in the environment.
# Writable paths: /var/lib/recorder (spool, local recordings) and /tmp; everything else
# can be read-only. The base image is made locally by scripts/make-base-image.sh when no
# registry is reachable.

ARG BASE_IMAGE=debian:bookworm-slim

# ---- builder: the wheel and its dependencies, in a venv copied whole to the final stage
FROM ${BASE_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions float with Debian's security updates; the base image fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DEFAULT_TIMEOUT=180 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt
RUN python3 -m venv /opt/recorder
WORKDIR /src
# Dependencies first, in their own layer: code changes rebuild only the last step.
# The package's version is its only input here besides pyproject.toml.
COPY pyproject.toml ./
COPY bot/__init__.py bot/
RUN /opt/recorder/bin/pip install . \
 && /opt/recorder/bin/pip uninstall -y consultation-recorder
COPY bot/ bot/
# The testbed (testbed/: local SFU, SeaweedFS, `bot demo`) is a distribution of its own
# and never enters the build context; pip itself is left out of what runs.
RUN /opt/recorder/bin/pip install --no-deps . \
 && /opt/recorder/bin/python -m pip uninstall -y pip \
 && /opt/recorder/bin/bot --version

# ---- runtime: Debian's Python and the venv, nothing to build with
FROM ${BASE_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# tini is PID 1 so that SIGTERM reaches the recorder even before it has installed its own
# handler (PID 1 ignores signals it has no handler for) and exited children are reaped.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/recorder \
      --shell /usr/sbin/nologin recorder \
 && install -d -o recorder -g recorder -m 0750 /var/lib/recorder
COPY --from=builder /opt/recorder /opt/recorder
COPY config.toml /etc/recorder/config.toml
COPY deploy/container/healthcheck.py /opt/recorder/healthcheck.py
ENV PATH=/opt/recorder/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/recorder
VOLUME ["/var/lib/recorder"]
# The control API's /healthz when control.enabled, else that the recorder's package
# imports and its settings load (deploy/container/healthcheck.py says why).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/opt/recorder/bin/python", "/opt/recorder/healthcheck.py"]
# On SIGTERM the recorder stops, finishes the MP4, uploads and verifies it, then exits:
# give it time (docker stop -t 120, terminationGracePeriodSeconds in Kubernetes).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "bot"]
CMD ["record", "--config", "/etc/recorder/config.toml"]
