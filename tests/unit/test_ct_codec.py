"""Marstek CT002/CT003 framing and fields (specs/batteries.md §3.1): golden frames and fuzzing."""

from __future__ import annotations

from functools import reduce

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meteremu.devices.marstek.ct_codec import (
    CtRequest,
    CtResponse,
    FrameError,
    decode_frame,
    encode_frame,
    encode_request,
    encode_response,
    frame_length,
    parse_checksum,
    parse_request,
    parse_response,
)
from tests.support.fuzz import fuzz_settings

# The spec's example request, MACs written out: LEN 53 is the spec's own figure.
GOLDEN_REQUEST = b"\x01\x0253|HMG-50|AABBCCDDEEFF|HME-4|112233445566|B|-217\x036E"
GOLDEN_CT002 = (b"\x01\x02102|HME-4|112233445566|HMG-50|AABBCCDDEEFF|100|-217|0|-117|1|1|1|1|-50|7"
                b"|0|0|-300|0|0|0|150|0|0|0\x0337")
GOLDEN_CT003 = (b"\x01\x02110|HME-4|112233445566|HMG-50|AABBCCDDEEFF|100|-217|0|-117|1|1|1|1|-50|7"
                b"|0|0|-300|0|0|0|150|0|0|0|0|0|0|0\x0334")
RESPONSE = CtResponse("HME-4", "112233445566", "HMG-50", "AABBCCDDEEFF", (100, -217, 0), -117, (1, 1, 1, 1),
                      -50, 7, (0, 0, -300, 0, 0), (0, 150, 0, 0, 0))


def independent_xor(data: bytes) -> int:
    return reduce(lambda a, b: a ^ b, data, 0)


class FramingTests(SynchronousTestCase):
    def test_golden_request(self) -> None:
        request = CtRequest("HMG-50", "AABBCCDDEEFF", "HME-4", "112233445566", "B", -217)
        self.assertEqual(encode_request(request), GOLDEN_REQUEST)
        self.assertEqual(parse_request(GOLDEN_REQUEST), request)
        self.assertEqual(len(GOLDEN_REQUEST), 53)
        self.assertEqual(int(GOLDEN_REQUEST[-2:], 16), independent_xor(GOLDEN_REQUEST[:-2]))

    def test_golden_responses(self) -> None:
        self.assertEqual(encode_response(RESPONSE, "ct002"), GOLDEN_CT002)
        self.assertEqual(len(decode_frame(GOLDEN_CT002)), 24)
        self.assertEqual(len(decode_frame(GOLDEN_CT003)), 28)
        self.assertEqual(parse_response(GOLDEN_CT002), ("ct002", RESPONSE))
        kind, ct003 = parse_response(GOLDEN_CT003)
        self.assertEqual((kind, ct003.energy), ("ct003", (0, 0, 0, 0)))
        for frame in (GOLDEN_CT002, GOLDEN_CT003):
            self.assertEqual(int(frame[-2:], 16), independent_xor(frame[:-2]))

    def test_length_counts_its_own_digits(self) -> None:
        self.assertEqual(frame_length(46), 53)  # 51 + 2 digits
        self.assertEqual(frame_length(93), 101)  # 98 + 2 = 100 has 3 digits: 98 + 3
        for n in range(0, 400):
            total = frame_length(n)
            self.assertEqual(total, 5 + n + len(str(total)))

    def test_checksum_any_case_and_the_space_quirk(self) -> None:
        self.assertEqual(parse_checksum(b"6e"), 0x6E)
        self.assertEqual(parse_checksum(b" A"), 0x0A)
        self.assertEqual(parse_checksum(b" a"), 0x0A)
        lower = GOLDEN_REQUEST[:-2] + GOLDEN_REQUEST[-2:].lower()
        self.assertEqual(parse_request(lower).power, -217)
        # a frame whose XOR has a zero high nibble, written " X" by some firmware
        for power in range(-300, 300):
            frame = encode_request(CtRequest("VNSE3-0", "AABBCCDDEEFF", "HME-4", "", "A", power))
            if frame[-2:-1] == b"0":
                spaced = frame[:-2] + b" " + frame[-1:]
                self.assertEqual(parse_request(spaced).power, power)
                break
        else:
            self.fail("no frame with a zero high nibble in range")

    def test_clear_rejections(self) -> None:
        cases = {
            b"": "too short",
            GOLDEN_REQUEST[:-1] + b"0": "does not match",
            GOLDEN_REQUEST[:-2] + b"ZZ": "not two hex digits",
            b"\x01\x0254" + GOLDEN_REQUEST[4:]: "length field says 54",
            b"\x00" + GOLDEN_REQUEST[1:]: "SOH STX",
            encode_frame(["HMG-50", "AABBCCDDEEFF"]): "2 fields",
            encode_frame(["HMG-50", "nothex", "HME-4", "", "A", "5"]): "battery MAC",
            encode_frame(["HMG-50", "AABBCCDDEEFF", "HME-4", "", "E", "5"]): "phase",
            encode_frame(["HMG-50", "AABBCCDDEEFF", "HME-4", "", "A", "5.5"]): "not an integer",
            encode_frame(["HMG-50", "AABBCCDDEEFF", "HME-4", "", "A", "99999999999"]): "out of range",
            encode_frame(["HMG-50", "AABBCCDDEEFF", "HME-4", "", "A", "5", "2"]): "participate",
            b"\x01\x02" + b"9" * 600: "too long",
        }
        for data, reason in cases.items():
            with self.subTest(data=data):
                error = self.assertRaises(FrameError, parse_request, data)
                self.assertIn(reason, str(error))

    def test_variants_accepted(self) -> None:
        empty_type = encode_frame(["VNSE3-0", "aabbccddeeff", "", "000000000000", "0", "0"])
        request = parse_request(empty_type)
        self.assertEqual((request.ct_type, request.phase, request.battery_mac), ("", "", "AABBCCDDEEFF"))
        b2500 = parse_request(encode_frame(["HMJ-2", "AABBCCDDEEFF", "HME-4", "", "d", "120", "1"]))
        self.assertEqual((b2500.phase, b2500.participate), ("D", True))

    def test_ct002_clamps_powers_to_int16(self) -> None:
        big = CtResponse("HME-4", "", "HMG-50", "AABBCCDDEEFF", (40000, -40000, 0), 40000, (1, 1, 1, 1))
        _, parsed = parse_response(encode_response(big, "ct002"))
        self.assertEqual((parsed.phase_power, parsed.total_power), ((32767, -32768, 0), 32767))
        _, wide = parse_response(encode_response(big, "ct003"))
        self.assertEqual(wide.total_power, 40000)


class FuzzTests(SynchronousTestCase):
    """Garbage is a FrameError, never another exception; valid requests round-trip."""

    @fuzz_settings(600)
    @given(st.binary(max_size=700))
    def test_garbage_is_a_frame_error(self, data: bytes) -> None:
        try:
            parse_request(data)
        except FrameError:
            pass

    @fuzz_settings(400)
    @given(st.lists(st.text(st.characters(min_codepoint=0, max_codepoint=300), max_size=20), max_size=9))
    def test_framed_garbage_fields_are_a_frame_error(self, fields: list[str]) -> None:
        try:
            data = encode_frame(fields)
        except ValueError:
            return
        for parse in (parse_request, parse_response):
            try:
                parse(data)
            except FrameError:
                pass

    @fuzz_settings(300)
    @given(st.binary(min_size=1, max_size=120), st.integers(0, 200))
    def test_mutated_golden_frames(self, noise: bytes, at: int) -> None:
        for frame in (GOLDEN_REQUEST, GOLDEN_CT002):
            data = frame[:at] + noise + frame[at + len(noise):]
            try:
                parse_request(data)
                parse_response(data)
            except FrameError:
                pass

    @fuzz_settings(300)
    @given(st.sampled_from(["HMG-50", "VNSE3-0", "HMJ-2"]), st.from_regex(r"[0-9A-F]{12}", fullmatch=True),
           st.sampled_from(["A", "B", "C", "D", ""]), st.integers(-(2**31), 2**31 - 1),
           st.sampled_from([None, True, False]))
    def test_requests_round_trip(self, kind: str, mac: str, phase: str, power: int,
                                 participate: bool | None) -> None:
        request = CtRequest(kind, mac, "HME-4", "", phase, power, participate)
        self.assertEqual(parse_request(encode_request(request)), request)
