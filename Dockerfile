# One image for the three OMS services; the compose file picks the service by its command
# (`python -m order_svc`, `python -m inventory_svc`, `python -m payment_svc`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMS_HOME=/var/lib/oms

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY order_svc ./order_svc
COPY inventory_svc ./inventory_svc
COPY payment_svc ./payment_svc
COPY cli ./cli
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/oms oms \
    && mkdir -p /var/lib/oms \
    && chown oms:oms /var/lib/oms

USER oms
VOLUME ["/var/lib/oms"]
CMD ["python", "-m", "order_svc"]
