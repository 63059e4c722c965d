"""Running meteremu in a container and as a Home Assistant add-on.

Small entry points that choose a configuration and then hand over to
``twistd meteremu`` (``entry``), probe ``/healthz`` for Docker's
``HEALTHCHECK`` (``healthcheck``), translate the add-on's
``/data/options.json`` into a meteremu config (``addon``) and grant the
interpreter ``CAP_NET_BIND_SERVICE`` at image build time (``filecaps``).
The deciding parts are pure functions; the I/O around them is a few lines.
"""
