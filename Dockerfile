# sms-bridge: email-to-SMS gateway. Build: docker build -t sms-bridge .
# Run:   docker run -p 2525:2525 -p 8080:8080 -v sms-bridge-data:/data sms-bridge
# Own configuration: add -v ./bridge.toml:/etc/sms-bridge/bridge.toml:ro (its values are
# used as written; -e BRIDGE_SECTION__KEY=value still overrides one of them).
FROM python:3.13-slim

# Settings live in the configuration file, not here: a BRIDGE_* variable baked into the
# image would silently override the same key of a mounted file.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_CONFIG=/etc/sms-bridge/bridge.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY config ./config
COPY config/container.toml /etc/sms-bridge/bridge.toml
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge:bridge /data

USER bridge
VOLUME ["/data"]
EXPOSE 2525 8080
# Reads the same configuration as serve: /readyz on the configured port.
HEALTHCHECK --interval=30s --timeout=3s CMD ["python", "-m", "bridge.healthcheck"]
ENTRYPOINT ["sms-bridge"]
CMD ["serve"]
