# odoo-watchdog as a container (used by docker-compose.yml). The config is mounted at
# /etc/odoo-watchdog/watchdog.yml; state goes to the /var/lib/odoo-watchdog volume.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY watchdog ./watchdog
RUN pip install . && rm -rf /src

# Non-root. Group 99 is `haproxy` in the haproxy:2.6 image: the admin socket is mode 660
# group haproxy, and docker-compose.yml adds this group (group_add) as well.
RUN groupadd --system --gid 10001 watchdog \
    && useradd --system --uid 10001 --gid watchdog --no-create-home --shell /usr/sbin/nologin watchdog \
    && mkdir -p /var/lib/odoo-watchdog /etc/odoo-watchdog \
    && chown watchdog:watchdog /var/lib/odoo-watchdog
USER watchdog
WORKDIR /var/lib/odoo-watchdog

EXPOSE 9721/tcp 5140/udp
ENTRYPOINT ["odoo-watchdog", "run", "-c", "/etc/odoo-watchdog/watchdog.yml"]
