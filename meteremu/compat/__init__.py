"""The only place meteremu touches other libraries' private names.

Every module here wraps one library's internals behind a small public
function, and names the versions it was checked against. Each has a contract
test (``tests/test_compat.py``) that fails when an upgrade moves or changes
what we rely on, so a dependency bump breaks one test with a clear message
instead of breaking the service at run time. Code outside this package uses
only public APIs.
"""
