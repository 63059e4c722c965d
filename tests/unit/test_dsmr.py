"""DSMR / P1: CRC, framing, spec detection, mapping (pure), then the whole path:
bytes over a real TCP socket or a pseudo-terminal → DsmrSource → Meter → Shelly
EM.GetStatus over UDP. Expected numbers: shared/specs/sources-sinks.md §7,
checks 1-15, and tests/fixtures/dsmr/README.md."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from meteremu.config import ConfigError, parse_config
from meteremu.sources.dsmr.options import split_host_port
from meteremu.sources.dsmr.parse import (
    VERSIONS,
    Accepted,
    P1Decoder,
    Rejected,
    TelegramFramer,
    crc16,
    detect_spec,
    parse_line,
    split_crc,
    with_crc,
)
from tests.support.p1 import (
    DSMR_FIXTURES,
    dsmr_fixture,
    dsmr_stamp,
    encrypt_telegram,
    register_sources,
    retime,
)
from tests.support.shared.dsmr import AUTH, KEY

ARRIVAL = 2_000_000_000.0


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def decode_one(name: str, **kw) -> Accepted | Rejected:
    results = P1Decoder(**kw).feed(dsmr_fixture(name), ARRIVAL)
    assert len(results) == 1, results
    return results[0]


def accepted(name: str, **kw) -> Accepted:
    result = decode_one(name, **kw)
    assert isinstance(result, Accepted), result
    return result


class CrcTests(SynchronousTestCase):
    def test_transmitted_crcs_match(self):
        # Check 1.
        expected = {"v5_iskra_mt382.txt": 0x6EEE, "v4_2_kaifa.txt": 0x6796,
                    "v5_iskra_am550_two_mbus.txt": 0x56DD, "be_fluvius_v171.txt": 0x3AD7,
                    "be_fluvius_v171_alt.txt": 0xC4B0, "at_sagemcom_t210_d_r.txt": 0x7EF9,
                    "hu_eon_sagemcom.txt": 0x99DA, "ie_iskra_mie5t.txt": 0xAD3B}
        for name, crc in expected.items():
            body, sent = split_crc(dsmr_fixture(name))
            self.assertEqual((crc16(body), sent), (crc, crc), name)
            self.assertTrue(accepted(name).crc)

    def test_unpadded_crc_is_accepted(self):
        # Check 2: "!B9F" is 0x0B9F.
        body, sent = split_crc(dsmr_fixture("v5_warmtelink_unpadded_crc.txt"))
        self.assertEqual((crc16(body), sent), (0x0B9F, 0x0B9F))
        self.assertTrue(accepted("v5_warmtelink_unpadded_crc.txt").crc)

    def test_flipped_digit_is_rejected_and_counted(self):
        # Check 3.
        good = dsmr_fixture("v5_iskra_mt382.txt")
        bad = good.replace(b"1-0:1.8.1(000004.426*kWh)", b"1-0:1.8.1(000005.426*kWh)")
        self.assertNotEqual(good, bad)
        decoder = P1Decoder()
        [result] = decoder.feed(bad, ARRIVAL)
        self.assertIsInstance(result, Rejected)
        self.assertEqual(result.reason, "crc")
        self.assertIn("6EEE", result.detail)
        self.assertEqual(decoder.counts, {"telegrams": 0, "crc_errors": 1, "parse_errors": 0, "decrypt_errors": 0})
        # check_crc: false accepts it (meters with a broken CRC).
        [result] = P1Decoder(check_crc=False).feed(bad, ARRIVAL)
        self.assertEqual(result.reading.energy, ((6825.0 + 1000.0, 2444.0),))

    def test_no_crc_versions(self):
        # Check 4: v2.2 and v3 carry no CRC and parse; gas from the two-line 24.3.0 form.
        for name in ("v2_2_iskra_mt382.txt", "v3_iskra_mt382.txt"):
            result = accepted(name)
            self.assertFalse(result.crc)
            self.assertEqual(result.spec, "2.2")
            self.assertEqual(result.reading.extras["gas_m3"], 1.001)
            self.assertEqual(result.reading.measured_at, ARRIVAL)  # no telegram clock

    def test_pinned_crc_version_rejects_a_telegram_without_crc(self):
        body, _ = split_crc(dsmr_fixture("v5_iskra_mt382.txt"))
        [result] = P1Decoder("5").feed(body + b"\r\n", ARRIVAL)
        self.assertEqual(result.reason, "no_crc")
        [result] = P1Decoder("auto").feed(body + b"\r\n", ARRIVAL)
        self.assertIsInstance(result, Accepted)

    def test_with_crc(self):
        body, _ = split_crc(dsmr_fixture("v5_iskra_mt382.txt"))
        self.assertEqual(with_crc(body), dsmr_fixture("v5_iskra_mt382.txt"))


class DetectionTests(SynchronousTestCase):
    EXPECTED = {
        "at_sagemcom_t210_d_r.txt": "SAGEMCOM_T210_D_R", "be_fluvius_v171.txt": "5B",
        "be_fluvius_v171_alt.txt": "5B", "hu_eon_sagemcom.txt": "5EONHU",
        "ie_iskra_mie5t.txt": "ISKRA_IE", "q3d_easymeter_esy5q3da1004.txt": "Q3D",
        "q3d_easymeter_esy5q3db1024.txt": "Q3D", "v2_2_iskra_mt382.txt": "2.2",
        "v3_iskra_mt382.txt": "2.2", "v4_2_kaifa.txt": "4", "v5_iskra_am550_two_mbus.txt": "5",
        "v5_iskra_mt382.txt": "5", "v5_warmtelink_unpadded_crc.txt": "5",
    }

    def test_every_fixture_is_recognised(self):
        self.assertEqual(sorted(self.EXPECTED), DSMR_FIXTURES)
        for name, spec in self.EXPECTED.items():
            self.assertEqual(detect_spec(dsmr_fixture(name).decode("latin-1")).name, spec, name)
            self.assertEqual(accepted(name).spec, spec, name)

    def test_detection_is_cached_per_header(self):
        decoder = P1Decoder()
        telegram = dsmr_fixture("v5_iskra_mt382.txt")
        decoder.feed(telegram, ARRIVAL)
        self.assertEqual(list(decoder._detected.values())[0].name, "5")
        decoder.feed(retime(telegram, 1_700_000_000), ARRIVAL)
        self.assertEqual(len(decoder._detected), 1)

    def test_pinned_version_parses_with_that_spec(self):
        self.assertEqual(accepted("v4_2_kaifa.txt", version="5").spec, "5")
        self.assertEqual(accepted("v4_2_kaifa.txt", version="5").reading.powers(), (170.0, 1247.0, 209.0))

    def test_line_settings(self):
        self.assertEqual(str(parse_line("9600 7e1")), "9600 7E1")
        self.assertEqual(str(VERSIONS["4"].line), "115200 7E1")
        self.assertEqual(str(VERSIONS["5"].line), "115200 8N1")
        self.assertEqual(str(VERSIONS["2.2"].line), "9600 7E1")
        self.assertRaises(ValueError, parse_line, "fast")


class MappingTests(SynchronousTestCase):
    """Checks 5-14: every fixture's numbers as the Meter receives them."""

    def test_v5_iskra(self):
        # Check 5.
        r = accepted("v5_iskra_mt382.txt").reading
        self.assertEqual(r.powers(), (70.0, 32.0, 142.0))
        self.assertEqual(r.total_act_power, 244.0)
        self.assertEqual([p.voltage for p in r.phases], [230.0, 230.0, 229.0])
        self.assertEqual([p.current for p in r.phases], [0.48, 0.44, 0.86])
        for p in r.phases:
            self.assertAlmostEqual(p.aprt_power, p.voltage * p.current)
            self.assertLessEqual(abs(p.pf), 1.0)
        self.assertEqual(r.energy, ((6825.0, 2444.0),))  # T1+T2 import, export: on phase A
        self.assertEqual(r.measured_at, 1483381202.0)  # 170102192002W → 2017-01-02T18:20:02Z
        x = r.extras
        self.assertEqual((x["power_import_w"], x["power_export_w"]), (244.0, 0.0))
        self.assertEqual((x["energy_import_t1_kwh"], x["energy_import_t2_kwh"]), (4.426, 2.399))
        self.assertEqual((x["energy_export_t1_kwh"], x["energy_export_t2_kwh"]), (2.444, 0.0))
        self.assertEqual(x["tariff"], 2.0)
        self.assertEqual(x["gas_m3"], 0.107)
        self.assertNotIn("gas_m3.2", x)  # channel 2 is present but empty
        [gas] = accepted("v5_iskra_mt382.txt").values.mbus
        self.assertEqual((gas.channel, gas.kind, gas.at), (1, "gas", epoch("2017-01-02T15:10:05")))

    def test_v4_kaifa_phases_are_not_corrected(self):
        # Check 6.
        result = accepted("v4_2_kaifa.txt")
        r = result.reading
        self.assertEqual(r.powers(), (170.0, 1247.0, 209.0))
        self.assertEqual(r.extras["power_import_w"], 2027.0)  # ≠ 1626: kept as sent
        self.assertEqual([p.voltage for p in r.phases], [230.0] * 3)  # no voltage lines: nominal
        # Currents 0/6/2 A: 0 A at 170 W is a rounded current, so it is derived instead.
        self.assertAlmostEqual(r.phases[0].current, 170 / 230)
        self.assertEqual([p.current for p in r.phases[1:]], [6.0, 2.0])
        self.assertEqual(r.energy, ((1581123.0 + 1435706.0, 0.0),))
        self.assertEqual(r.measured_at, epoch("2016-11-13T19:57:57"))
        self.assertEqual(r.extras["gas_m3"], 981.443)
        self.assertEqual(result.values.mbus[0].at, epoch("2016-11-29T19:00:00"))
        self.assertEqual(result.values.p1_version, "42")

    def test_v5_two_mbus_empty_channel_is_not_zero_gas(self):
        # Check 7.
        result = accepted("v5_iskra_am550_two_mbus.txt")
        r = result.reading
        self.assertEqual([m.channel for m in result.values.mbus], [2])
        self.assertEqual(r.extras["gas_m3"], 246.138)
        self.assertEqual(result.values.mbus[0].at, epoch("2020-04-26T20:30:01"))
        self.assertEqual(r.measured_at, epoch("2020-04-26T20:33:25"))
        self.assertEqual(r.powers(), (56.0, 0.0, 55.0))
        self.assertEqual([p.voltage for p in r.phases], [229.9, 229.2, 222.9])

    def test_belgian_fluvius(self):
        # Check 8.
        r = accepted("be_fluvius_v171.txt").reading
        self.assertEqual(r.powers(), (0.0, 0.0, 0.0))
        self.assertEqual(r.energy, ((34.0 + 15758.0, 11.0),))
        self.assertEqual(r.extras["gas_m3"], 112.384)
        self.assertEqual(r.extras["water_m3"], 872.234)
        self.assertEqual(r.extras["average_demand_w"], 2351.0)
        self.assertEqual(r.extras["month_peak_w"], 2589.0)
        self.assertEqual(r.measured_at, epoch("2020-05-12T11:54:09"))

    def test_belgian_invalid_history_timestamp(self):
        # Check 9.
        r = accepted("be_fluvius_v171_alt.txt").reading
        self.assertEqual(r.powers(), (47.0, 179.0, 111.0))
        self.assertEqual(r.extras["power_import_w"], 338.0)
        self.assertEqual((r.extras["gas_m3"], r.extras["water_m3"]), (92.287, 8.579))

    def test_austrian_units_in_wh_and_w(self):
        # Check 10: no per-phase power, so the total goes on phase A.
        result = accepted("at_sagemcom_t210_d_r.txt")
        r = result.reading
        self.assertEqual(r.powers(), (286.0,))
        self.assertFalse(result.values.per_phase_power)
        self.assertEqual(r.energy, ((6545766.0, 58.0),))
        self.assertEqual(r.extras["reactive_export_var"], 166.0)

    def test_q3d_easymeter(self):
        # Check 11.
        r = accepted("q3d_easymeter_esy5q3db1024.txt").reading
        self.assertEqual(r.powers(), (747.85, 737.28, 639.73))
        self.assertEqual(r.extras["power_import_w"], 2124.86)
        self.assertEqual(r.energy, ((52185782.5309, 19949322.1493),))
        self.assertEqual(r.measured_at, ARRIVAL)
        r = accepted("q3d_easymeter_esy5q3da1004.txt").reading
        self.assertEqual(r.extras["power_import_w"], 1688.21)
        self.assertEqual(r.energy, ((32549506.1662, 0.0),))

    def test_hungary_export_on_phase_a_with_measured_voltages(self):
        # Check 12.
        r = accepted("hu_eon_sagemcom.txt").reading
        self.assertEqual(r.powers(), (-2601.0, 0.0, 0.0))
        self.assertEqual([p.voltage for p in r.phases], [240.4, 239.1, 241.2])
        self.assertEqual([p.freq for p in r.phases], [50.0] * 3)
        self.assertEqual(r.energy, ((173640.0, 627177.0),))  # 1.8.0/2.8.0, not the tariff sums again
        self.assertEqual(r.phases[0].pf, -1.0)

    def test_ireland_exact_decimal_and_0x02_header(self):
        # Check 13.
        r = accepted("ie_iskra_mie5t.txt").reading
        self.assertEqual(r.powers(), (-10.0, -10.0, -10.0))

    def test_warmtelink_heat_only_has_no_phases(self):
        # Check 14.
        r = accepted("v5_warmtelink_unpadded_crc.txt").reading
        self.assertEqual(r.phases, ())
        self.assertIsNone(r.energy)
        self.assertAlmostEqual(r.extras["heat_energy_kwh"], 66905.556, places=3)
        self.assertEqual(r.total_act_power, 0.0)

    def test_arrival_timestamps(self):
        r = accepted("v5_iskra_mt382.txt", timestamps="arrival").reading
        self.assertEqual(r.measured_at, ARRIVAL)

    def test_second_device_of_a_kind_gets_its_channel(self):
        telegram = dsmr_fixture("v5_iskra_am550_two_mbus.txt").replace(
            b"0-1:24.2.1(700101010000W)(00000000)", b"0-1:24.2.1(200426223001S)(00012.500*m3)")
        body, _ = split_crc(telegram)
        r = P1Decoder().feed(with_crc(body), ARRIVAL)[0].reading
        self.assertEqual((r.extras["gas_m3"], r.extras["gas_m3.2"]), (12.5, 246.138))


class FramingTests(SynchronousTestCase):
    def test_junk_then_telegram_then_half_in_7_byte_chunks(self):
        # Check 15.
        v4, v5 = dsmr_fixture("v4_2_kaifa.txt"), dsmr_fixture("v5_iskra_mt382.txt")
        stream = b"\x00\xffjunk!\r\n" + v4 + v5[: len(v5) // 2]
        framer = TelegramFramer()
        out = []
        for i in range(0, len(stream), 7):
            out += framer.feed(stream[i:i + 7])
        self.assertEqual(out, [v4])
        self.assertEqual(framer.feed(v5[len(v5) // 2:]), [v5])

    def test_concatenated_garbage_between_and_a_bad_crc(self):
        decoder = P1Decoder()
        t0 = 1_700_000_000
        good = [retime(dsmr_fixture("v5_iskra_mt382.txt"), t0 + i) for i in range(3)]
        bad = good[1].replace(b"(00.070*kW)", b"(00.071*kW)")
        stream = good[0] + b"\r\nnoise/partial" + bad + b"garbage" + good[2]
        results = decoder.feed(stream, ARRIVAL)
        self.assertEqual([type(r).__name__ for r in results], ["Accepted", "Rejected", "Accepted"])
        self.assertEqual([r.reading.measured_at for r in results if isinstance(r, Accepted)],
                         [t0, t0 + 2])
        self.assertEqual(decoder.counts["crc_errors"], 1)
        self.assertGreater(decoder.framer.discarded, len(b"noise/partial"))

    def test_byte_by_byte(self):
        framer = TelegramFramer()
        telegram = dsmr_fixture("ie_iskra_mie5t.txt")
        out = [t for b in telegram for t in framer.feed(bytes((b,)))]
        self.assertEqual(out, [telegram])

    def test_buffer_is_bounded(self):
        framer = TelegramFramer(limit=1000)
        framer.feed(b"/" + b"x" * 5000)
        self.assertEqual(framer.pending, 0)
        self.assertEqual(framer.feed(dsmr_fixture("v4_2_kaifa.txt")), [dsmr_fixture("v4_2_kaifa.txt")])

    def test_retime_keeps_the_crc_valid(self):
        telegram = retime(dsmr_fixture("v5_iskra_mt382.txt"), 1_700_000_000)
        self.assertIn(b"0-0:1.0.0(" + dsmr_stamp(1_700_000_000) + b")", telegram)
        [result] = P1Decoder().feed(telegram, ARRIVAL)
        self.assertEqual(result.reading.measured_at, 1_700_000_000.0)
        summer = retime(dsmr_fixture("v5_iskra_mt382.txt"), epoch("2024-07-01T12:00:00"))
        self.assertIn(b"(240701140000S)", summer)
        self.assertEqual(P1Decoder().feed(summer, 0)[0].reading.measured_at, epoch("2024-07-01T12:00:00"))


class EncryptedTests(SynchronousTestCase):
    """DLMS-encrypted telegrams (Austria's Sagemcom, Luxembourg's Smarty)."""

    def test_sagemcom_frames_between_junk_in_pieces(self):
        plain = dsmr_fixture("at_sagemcom_t210_d_r.txt")
        frames = [encrypt_telegram(plain, KEY, AUTH, counter=n) for n in (1, 2)]
        stream = b"\x00\xffjunk\xdb\x07" + frames[0] + b"noise" + frames[1]
        decoder = P1Decoder("SAGEMCOM_T210_D_R", encryption_key=KEY, authentication_key=AUTH)
        results = [r for i in range(0, len(stream), 11) for r in decoder.feed(stream[i:i + 11], ARRIVAL)]
        self.assertEqual([type(r).__name__ for r in results], ["Accepted", "Accepted"])
        self.assertEqual(results[0].reading.powers(), (286.0,))
        self.assertEqual(results[0].reading.energy, ((6545766.0, 58.0),))
        self.assertTrue(results[0].crc)

    def test_auto_detects_inside_and_no_authentication_key(self):
        frame = encrypt_telegram(dsmr_fixture("at_sagemcom_t210_d_r.txt"), KEY, AUTH)
        [result] = P1Decoder("auto", encryption_key=KEY).feed(frame, ARRIVAL)
        self.assertEqual((result.spec, result.reading.powers()), ("SAGEMCOM_T210_D_R", (286.0,)))

    def test_wrong_keys_are_counted(self):
        frame = encrypt_telegram(dsmr_fixture("at_sagemcom_t210_d_r.txt"), KEY, AUTH)
        decoder = P1Decoder("SAGEMCOM_T210_D_R", encryption_key=bytes(16), authentication_key=AUTH)
        [result] = decoder.feed(frame, ARRIVAL)
        self.assertEqual(result.reason, "decrypt")
        [result] = P1Decoder("auto", encryption_key=bytes(16)).feed(frame, ARRIVAL)
        self.assertEqual(result.reason, "decrypt")
        self.assertEqual(decoder.counts["decrypt_errors"], 1)

    def test_luxembourg_msn_with_the_public_authentication_key(self):
        from meteremu.sources.dsmr.parse import MSN_AUTHENTICATION_KEY

        frame = encrypt_telegram(dsmr_fixture("v5_iskra_mt382.txt"), KEY, MSN_AUTHENTICATION_KEY)
        [result] = P1Decoder("MSn", encryption_key=KEY).feed(frame, ARRIVAL)
        self.assertEqual((result.spec, result.reading.powers()), ("MSn", (70.0, 32.0, 142.0)))


class OptionsTests(SynchronousTestCase):
    def setUp(self):
        register_sources(self)

    def parse(self, **source):
        data = {"meters": {"p1": {"source": {"type": "dsmr", **source}}}, "devices": []}
        return parse_config(data, "test.yaml", env={}).meters["p1"].source.options

    def test_defaults_and_yaml_numbers(self):
        options = self.parse(tcp="10.1.2.3:2000")
        self.assertEqual((options.version, options.interval, options.idle()), ("auto", 10.0, 30.0))
        self.assertEqual(self.parse(serial="/dev/ttyUSB0", version=5).spec_name(), "5")
        self.assertEqual(self.parse(serial="/dev/ttyUSB0", version=2.2).spec_name(), "2.2")
        self.assertEqual(self.parse(serial="/dev/ttyUSB0", version="5b").spec_name(), "5B")
        self.assertEqual(self.parse(tcp="h:1", interval="1s").idle(), 30.0)
        self.assertEqual(self.parse(tcp="h:1", interval="20s").idle(), 60.0)
        self.assertEqual(split_host_port("[::1]:2000"), ("::1", 2000))

    def test_errors_name_the_key(self):
        cases = [
            ({}, "meters.p1.source.serial"),
            ({"serial": "/dev/ttyUSB0", "tcp": "h:1"}, "meters.p1.source.serial"),
            ({"tcp": "nohost"}, "meters.p1.source.tcp"),
            ({"tcp": "h:1", "version": "6"}, "meters.p1.source.version"),
            ({"serial": "/dev/x", "line": "fast"}, "meters.p1.source.line"),
            ({"tcp": "h:1", "line": "9600 7E1"}, "meters.p1.source.line"),
            ({"tcp": "h:1", "interval": "10s", "idle_timeout": "10s"}, "meters.p1.source.idle_timeout"),
            ({"tcp": "h:1", "version": "MSn"}, "meters.p1.source.encryption_key"),
            ({"tcp": "h:1", "encryption_key": "00"}, "meters.p1.source.encryption_key"),
            ({"tcp": "h:1", "authentication_key": "00" * 16}, "meters.p1.source.authentication_key"),
        ]
        for source, key in cases:
            with self.assertRaises(ConfigError) as caught:
                self.parse(**source)
            self.assertEqual(caught.exception.key, key, source)

    def test_stale_after_follows_interval(self):
        data = {"meters": {"p1": {"source": {"type": "dsmr", "tcp": "h:1", "interval": "1s"}}}, "devices": []}
        config = parse_config(data, "t", env={})
        from meteremu.meter import default_stale_after
        from meteremu.sources import source_module

        module = source_module("dsmr")
        self.assertEqual(default_stale_after(config.meters["p1"].source.options.interval,
                                             getattr(module, "PUSH", False)), 5.0)
