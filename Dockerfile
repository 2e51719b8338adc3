# Phalanx node image: `phalanx` on a slim Python base, run as a non-root user, the ledger and
# keys on the volume /var/lib/phalanx, healthy when /v1/health answers 200.
#
#   docker build -t phalanx .
#   docker run --rm phalanx --version
#   docker compose up      # a 4-node cluster, see compose.yaml
#
# Build stage: a wheel of the project (no compilers needed: every dependency ships wheels).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY consensus ./consensus
COPY crypto ./crypto
COPY ledger ./ledger
COPY node ./node
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Run stage: only the installed wheels, no sources, no build tools.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PHALANX_HEALTH_URL=http://127.0.0.1:7000/v1/health
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/phalanx --create-home phalanx \
    && mkdir /cluster && chown 10001:10001 /cluster
COPY --chmod=0755 docker/setup-cluster.sh /usr/local/bin/phalanx-setup-cluster
# The user phalanx, by number so that the host can resolve it.
USER 10001:10001
WORKDIR /var/lib/phalanx
VOLUME ["/var/lib/phalanx"]
# 7000: HTTP API and dashboard; 7100: peer links (both set in the node's config).
EXPOSE 7000 7100
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['PHALANX_HEALTH_URL'], timeout=2).status == 200 else 1)"]
ENTRYPOINT ["phalanx"]
CMD ["node", "run", "--config", "/var/lib/phalanx/node.json"]
