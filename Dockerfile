# mcpgateway: the gateway, Node (npx) and uv (uvx) for the MCP servers it runs.
#
#   docker build -t mcpgateway .
#   docker run -e MCP_AUTH_PASSWORD=... -p 8080:8080 \
#       -v ./config.json:/etc/mcpgateway/config.json:ro \
#       -v ./certs:/var/lib/mcpgateway/certs:ro mcpgateway
#
# See README.rst, "Deploying (Docker, compose, systemd)".  Every command below
# is run on the host by tests/test_deploy.py (there is no Docker daemon in CI).

# -- build: the wheel, from this checkout ---------------------------------------
FROM python:3.12-slim-trixie AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- run --------------------------------------------------------------------------
FROM python:3.12-slim-trixie

# Debian 13's Node 20 and npm for npx servers; tini as PID 1 (forwards SIGTERM
# to twistd only, so the gateway drains, and reaps orphaned grandchildren);
# util-linux (setsid, prlimit, setpriv) for the sandbox's launch chain.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm tini util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# The gateway and uv/uvx (a binary wheel) for Python MCP servers.
ARG UV_VERSION=0.13.9
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "uv==${UV_VERSION}" /wheels/*.whl \
    && rm -rf /wheels \
    && twistd --help > /dev/null

# A non-root user; its home is the working directory, where the sandbox
# (./sandbox), the state (./state) and the default certificate
# (./certs/server.pem) are: mount a volume there to keep the state.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mcpgateway --create-home mcpgateway
COPY config/config.json /etc/mcpgateway/config.json
COPY deploy/healthcheck.py /usr/local/bin/mcpgateway-healthcheck
WORKDIR /var/lib/mcpgateway
USER 10001:10001

# All interfaces inside the container: the shipped configuration then refuses
# the placeholder password, so set MCP_AUTH_PASSWORD (or mount a config).
ENV MCP_HOST=0.0.0.0 \
    MCP_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
VOLUME ["/var/lib/mcpgateway"]

# Down while draining (503) as well as when dead.
HEALTHCHECK --interval=10s --timeout=6s --start-period=20s --retries=3 \
    CMD ["python", "/usr/local/bin/mcpgateway-healthcheck"]

# Stop with more time than session.drain_timeout (30 s): docker stop -t 40.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--"]
CMD ["twistd", "-n", "--pidfile=", "mcpgateway", "--config", "/etc/mcpgateway/config.json"]
