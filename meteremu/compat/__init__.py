"""The only place meteremu touches other libraries' private names.

Every module here wraps one library's internals behind a small public
function, and names the versions it was checked against. Each has a contract
test (``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py``) that fails when an upgrade moves or changes
what we rely on, so a dependency bump breaks one test with a clear message
instead of breaking the service at run time. Code outside this package uses
only public APIs. Contract tests: ``tests/unit/test_compat.py`` and ``tests/integration/test_compat.py`` and
``tests/integration/test_compat_sources.py``.

* ``lazytls`` — Twisted's pyOpenSSL probes, hidden at start-up and restored
  on first use (contract: ``tests/system/test_lazytls.py``);
* ``autobahn_server`` — Autobahn's WebSocket server core glued to Twisted
  without ``autobahn.twisted``;
* ``tcp`` — unsent bytes of a TCP transport, and sending at once;
* ``udp`` — answering a datagram on the listening socket itself;
* ``http_server`` — Twisted Web request bodies bounded before they are read;
* ``client_service`` — ``ClientService``'s retry line at debug level;
* ``paho`` — paho-mqtt's socket creation (``tests/integration/test_compat_sources.py``).
"""
