"""Checks shared by the options of the polled HTTP sources (http_json, tasmota, tibber_pulse). Pure.

Only the standard library and :mod:`meteremu.tls`'s pure helpers: validating
a config must load no client stack (the registry contract).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from meteremu.tls import check_ca_file, parse_fingerprint


def url_errors(name: str, url: str) -> list[tuple[str, str]]:
    """An ``http://`` or ``https://`` URL with a host and no credentials in it."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises ValueError for a bad port
    except ValueError as exc:
        return [(name, f"a URL like http://192.168.1.60/api ({exc})")]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [(name, "a URL like http://192.168.1.60/api (http or https, with a host)")]
    if parts.username is not None or parts.password is not None:
        # In the URL they would end up in logs and the dashboard.
        return [(name, "a URL without user:password@ (use the username and password options)")]
    if port == 0:
        return [(name, "a URL with a port from 1 to 65535")]
    return []


def timing_errors(options: Any, names: tuple[str, ...] = ("interval", "timeout", "reconnect_min",
                                                          "reconnect_max")) -> list[tuple[str, str]]:
    errors = [(n, "a duration greater than 0") for n in names if not getattr(options, n) > 0]
    if not errors and options.reconnect_max < options.reconnect_min:
        errors.append(("reconnect_max", "a duration at least reconnect_min"))
    return errors


def auth_errors(options: Any) -> list[tuple[str, str]]:
    """``username``/``password`` (basic) or ``token`` (bearer), not both."""
    errors: list[tuple[str, str]] = []
    if getattr(options, "token", None) and (options.username or options.password):
        errors.append(("token", "either token (bearer) or username/password (basic), not both"))
    if options.password and not options.username:
        errors.append(("username", "a user name with the password (basic authentication)"))
    return errors


def tls_errors(options: Any, url: str) -> list[tuple[str, str]]:
    """``tls_fingerprint``, ``ca_file`` and ``verify_ssl``: at most one way to trust, for https."""
    errors: list[tuple[str, str]] = []
    chosen = [n for n, v in (("tls_fingerprint", options.tls_fingerprint), ("ca_file", options.ca_file),
                             ("verify_ssl", not options.verify_ssl)) if v]
    if chosen and not url.strip().lower().startswith("https://"):
        errors.append((chosen[0], "an https:// URL (plain http has no certificate to check)"))
    if len(chosen) > 1:
        errors.append((chosen[1], "one of tls_fingerprint, ca_file or verify_ssl: false"))
    if options.tls_fingerprint is not None:
        try:
            parse_fingerprint(options.tls_fingerprint)
        except ValueError:
            errors.append(("tls_fingerprint", "a SHA-256 fingerprint: 64 hex digits, colons allowed"))
    if options.ca_file is not None:
        try:
            check_ca_file(options.ca_file)
        except (OSError, ValueError) as exc:
            errors.append(("ca_file", f"a readable PEM file with a certificate ({exc})"))
    return errors


def shown_url(url: str) -> str:
    """``url`` for logs and the dashboard: the query left out (it may carry a password)."""
    parts = urlsplit(url.strip())
    return parts._replace(query="…" if parts.query else "", fragment="").geturl()
