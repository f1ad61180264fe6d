# sms-bridge: email-to-SMS gateway. Build: docker build -t sms-bridge .
# Run:   docker run -p 2525:2525 -p 8080:8080 -v sms-bridge-data:/data sms-bridge
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_SMTP__HOST=0.0.0.0 \
    BRIDGE_HTTP__HOST=0.0.0.0 \
    BRIDGE_STORE__URL=sqlite:////data/sms-bridge.sqlite3

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY config ./config
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge:bridge /data

USER bridge
VOLUME ["/data"]
EXPOSE 2525 8080
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["sms-bridge"]
CMD ["serve"]
