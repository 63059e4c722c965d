"""The connection caps' bookkeeping (meteremu.connections), the open-files budget, the unit file."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher
from twisted.trial.unittest import TestCase

from meteremu.config import ConfigError, parse_config
from meteremu.connections import HTTP, MODBUS, ConnectionLimits, ConnectionRegistry
from meteremu.openfiles import RESERVED, connection_budget
from tests.support import ROOT


class Closable:
    """Stands for a transport: records that the registry closed it."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self) -> None:
        self.closed = True


def registry(**limits: Any) -> ConnectionRegistry:
    return ConnectionRegistry(ConnectionLimits(**limits), Clock(), Logger(namespace="test.connections"))


def admit(reg: ConnectionRegistry, ip: str = "10.0.0.1", kind: str = HTTP) -> Any:
    entry = reg.admit(ip, kind)
    if entry is not None:
        entry.close = Closable()
    return entry


class RegistryTests(TestCase):
    def test_past_the_per_address_cap_new_ones_are_refused_others_still_admitted(self) -> None:
        reg = registry(max_per_ip=2)
        first, second = admit(reg), admit(reg)
        self.assertIsNone(admit(reg))
        self.assertIsNotNone(admit(reg, "10.0.0.2"))
        self.assertFalse(first.close.closed or second.close.closed, "a refusal evicts nobody")
        self.assertEqual(reg.refused, 1)
        first.release()
        self.assertIsNotNone(admit(reg))

    def test_at_the_total_cap_the_oldest_unserved_one_is_evicted(self) -> None:
        reg = registry(max_connections=3, max_per_ip=10)
        served, old, young = admit(reg), admit(reg), admit(reg)
        served.mark_served()
        newcomer = admit(reg)
        self.assertIsNotNone(newcomer)
        self.assertTrue(old.close.closed)
        self.assertFalse(served.close.closed or young.close.closed)
        self.assertEqual((len(reg), reg.evicted), (3, 1))
        old.release()  # the transport's connectionLost comes later: counted once only
        self.assertEqual(len(reg), 3)

    def test_at_the_total_cap_with_everyone_served_the_new_one_is_refused(self) -> None:
        reg = registry(max_connections=2, max_per_ip=10)
        for entry in (admit(reg), admit(reg)):
            entry.mark_served()
        self.assertIsNone(admit(reg))
        self.assertEqual((reg.refused, reg.evicted), (1, 0))

    def test_the_modbus_cap_evicts_only_modbus(self) -> None:
        reg = registry(max_modbus=2, max_per_ip=10)
        http = admit(reg)
        silent = admit(reg, kind=MODBUS)
        served = admit(reg, kind=MODBUS)
        served.mark_served()
        self.assertIsNotNone(admit(reg, kind=MODBUS))
        self.assertTrue(silent.close.closed)
        self.assertFalse(http.close.closed or served.close.closed)
        self.assertEqual(reg.count(MODBUS), 2)

    def test_counts_follow_releases(self) -> None:
        reg = registry()
        entries = [admit(reg, f"10.0.0.{i % 3}", HTTP if i % 2 else MODBUS) for i in range(10)]
        for entry in entries:
            entry.release()
            entry.release()
        self.assertEqual((len(reg), reg.count(MODBUS), reg.count(ip="10.0.0.1")), (0, 0, 0))

    def test_refusals_are_logged_once_a_minute_with_a_count(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reg = registry(max_per_ip=1)
        admit(reg)
        for _ in range(1000):
            admit(reg)
        mine = [e for e in events if e.get("log_namespace") == "test.connections"]
        self.assertEqual(len(mine), 1)
        self.assertEqual(reg.refused, 1000)


class OpenFilesTests(TestCase):
    def test_the_cap_fits_under_the_limit(self) -> None:
        self.assertEqual(connection_budget(512, 8192), 512)
        self.assertEqual(connection_budget(512, 256), 256 - RESERVED)
        self.assertEqual(connection_budget(512, None), 512)
        self.assertEqual(connection_budget(512, 64), 16)

    def test_the_unit_raises_the_open_files_limit(self) -> None:
        with open(os.path.join(ROOT, "systemd", "meteremu.service"), encoding="utf-8") as handle:
            self.assertIn("LimitNOFILE=8192\n", handle.read())


class ConfigTests(TestCase):
    def test_defaults_and_bad_values(self) -> None:
        limits = parse_config({}, "(test)", env={}).server.connection_limits()
        self.assertEqual(limits, ConnectionLimits())
        for key, value in (("max_connections", 0), ("max_connections_per_ip", -1), ("header_timeout", "0s")):
            with self.assertRaises(ConfigError) as caught:
                parse_config({"server": {key: value}}, "(test)", env={})
            self.assertIn(f"server.{key}", str(caught.exception))
