"""Tasmota's sensor JSON → Readings. Pure.

``Status 10`` answers ``{"StatusSNS": {"Time": …, "SML": {…}, …}}``; the
``tele/<topic>/SENSOR`` message is the inner object. Both are unwrapped to
the same document, so the fields and paths of the options are the same in
both modes. Tasmota's ``Time`` is local time in whole seconds: samples are
timed by their arrival instead.

A Tasmota with a web password answers a request without the right one with
``{"WARNING": "Need user=<username>&password=<password>"}`` (HTTP 200 on
older releases, 401 on newer): :class:`PasswordRefused`.
"""

from __future__ import annotations

from typing import Any

from meteremu.failures import Explained
from meteremu.reading import Reading
from meteremu.sources.jsonfields import DocumentError, Extraction, decode_document, read_document


class PasswordRefused(Explained):
    pass


def sensor_document(doc: Any) -> Any:
    """The sensor object of a Status 10 answer or a SENSOR message; DocumentError otherwise."""
    if not isinstance(doc, dict):
        raise DocumentError("not a JSON object")
    warning = doc.get("WARNING")
    if isinstance(warning, str) and "password" in warning.lower():
        raise PasswordRefused("the Tasmota refused the web password (it wants user= and password=)")
    inner = doc.get("StatusSNS", doc)
    if not isinstance(inner, dict):
        raise DocumentError("StatusSNS is not an object")
    return inner


def read_sensor(extraction: Extraction, body: bytes, measured_at: float) -> Reading:
    """A Status 10 answer or SENSOR payload → Reading (DocumentError, ValueProblem, PasswordRefused)."""
    return read_document(extraction, sensor_document(decode_document(body)), measured_at)
