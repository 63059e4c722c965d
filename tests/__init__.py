"""meteremu's test suite (``trial --reactor=meteremu tests``).

Under the ``meteremu`` reactor TLS support is hidden until released (see
``meteremu.compat.lazytls``); the tests import pyOpenSSL themselves (TLS fakes), so
it is released here, before any test module is imported. Twisted's TLS
globals then stay stand-ins until the first TLS connection, so every HTTPS and
``wss`` test below goes through the deferred loading the service uses.
"""

from meteremu.compat import lazytls

lazytls.release()
