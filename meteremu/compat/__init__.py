"""The only place meteremu touches other libraries' private names.

Every module here wraps one library's internals behind a small public
function, and names the versions it was checked against. Each has a contract
test (``tests/test_compat.py``) that fails when an upgrade moves or changes
what we rely on, so a dependency bump breaks one test with a clear message
instead of breaking the service at run time. Code outside this package uses
only public APIs.

* ``lazytls`` — Twisted's pyOpenSSL probes, hidden at start-up and restored
  on first use (contract: ``tests/test_lazytls.py``);
* ``autobahn_server`` — Autobahn's WebSocket server core glued to Twisted
  without ``autobahn.twisted``;
* ``tcp`` — unsent bytes of a TCP transport, and sending at once;
* ``udp`` — answering a datagram on the listening socket itself;
* ``paho`` and ``twisted_web`` — paho-mqtt's socket creation and Twisted's
  HTTP client internals (``tests/test_compat_sources.py``).
"""
