# meteremu container image (docs/container.md).
#
#   docker build -t meteremu .
#   docker run -d --name meteremu --network host -v meteremu-data:/data meteremu
#
# Host networking: batteries find a Shelly by UDP broadcast and mDNS, which a
# bridged network does not carry. Without a config the simulator runs on the
# real device's ports (HTTP 80, UDP 1010/2220, Modbus 502); mount yours at
# /config/meteremu.yaml or pass METEREMU_CONFIG / METEREMU_CONFIG_YAML.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# WHEELS: a folder in the build context holding every wheel needed, for an
# offline build (the test suite uses it); empty = install from PyPI.
ARG WHEELS=
# FORECAST=1: include numpy/scipy/scikit-learn for forecasting (tag it
# meteremu:forecast; the add-on builds on it). Without them the image stays
# under 200 MB; forecasting, imported only when enabled, then refuses to start
# with a clear message.
ARG FORECAST=0
# EXTRAS: optional features, e.g. EXTRAS=sml for the tibber_pulse and sml
# sources (smllib, GPL-3.0: not in the default image), EXTRAS=esphome for the
# esphome source (aioesphomeapi), or both: EXTRAS=sml,esphome.
ARG EXTRAS=
COPY . /src
RUN set -eu; \
    if [ -n "$WHEELS" ]; then set -- --no-index --find-links "/src/$WHEELS"; fi; \
    target=/src; if [ -n "$EXTRAS" ]; then target="/src[$EXTRAS]"; fi; \
    python3 -m venv /opt/meteremu; \
    /opt/meteremu/bin/pip install --no-cache-dir --no-compile "$@" "$target"; \
    if [ "$FORECAST" = 0 ]; then \
        /opt/meteremu/bin/pip uninstall -q -y scikit-learn scipy numpy joblib threadpoolctl narwhals; \
    fi; \
    # Not needed to run: the installer itself and the libraries' own test suites.
    /opt/meteremu/bin/pip uninstall -q -y pip setuptools wheel; \
    find /opt/meteremu/lib -depth -type d \( -name tests -o -name test \) -path '*/site-packages/*' \
        -exec rm -rf {} +; \
    # Twisted's plugin cache, so twistd finds the meteremu plugin without writing it.
    PYTHONDONTWRITEBYTECODE=1 /opt/meteremu/bin/python -c \
        "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"; \
    # No bytecode, as in the official Python images (29 MB, most never imported);
    # the runtime stage compiles what a start imports (meteremu.container.warmup).
    find /opt/meteremu -depth -name __pycache__ -type d -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin meteremu \
 && mkdir -p /data /config \
 && chown meteremu:meteremu /data
COPY --from=build /opt/meteremu /opt/meteremu
# The bytecode of what a start imports (the service user cannot write it), then
# ports 80, 502 and 1010 without root: CAP_NET_BIND_SERVICE on the interpreter.
RUN /opt/meteremu/bin/python -m meteremu.container.warmup \
 && /opt/meteremu/bin/python -m meteremu.container.filecaps
ENV PATH=/opt/meteremu/bin:$PATH \
    PYTHONUNBUFFERED=1
USER meteremu
WORKDIR /data
VOLUME ["/data"]
EXPOSE 80/tcp 502/tcp 1010/udp 2220/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["meteremu-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["meteremu-container"]
