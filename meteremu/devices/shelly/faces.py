"""Which Shelly a device impersonates: the Pro 3EM, the EM Gen3 or the Pro EM-50.

All three answer from the same core (RPC methods, transports, stale policy);
what differs is data, taken from real captures (tests/fixtures/shelly):
the id prefix, how many ``em1`` channels there are and what they carry,
and which components ``Shelly.GetStatus``/``GetConfig`` list. A face is
plain data, so the core stays one copy.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Face:
    """What tells one Shelly meter model apart from another on the wire.

    ``channels`` 0 is the Pro 3EM (``em:0``, or ``em1:0..2`` with its
    monophase profile); above 0 the device has that many ``em1`` channels,
    the first carrying the whole meter (the sum of its phases: what a
    battery regulates on) and the others measuring nothing. ``components``
    lists what the real device's GetStatus/GetConfig hold (None: all the
    core builds); ``profiles`` is False where GetDeviceInfo and
    ``sys.device`` have no ``profile`` key, ``sys_button`` False where
    ``sys.device`` has no ``sys_btn_toggle`` (the EM Gen3).
    """

    type: str
    prefix: str
    channels: int = 0
    components: frozenset[str] | None = None
    profiles: bool = True
    ct_type: str = "120A"
    sys_button: bool = True


PRO_3EM = Face("shelly_pro_3em", "shellypro3em")
# Real EM Gen3 (S3EM-002CXCEU, fw 1.7.5): no eth, modbus or temperature:0. Its relay
# (switch:0) is not emulated: there is nothing behind it to switch.
EM_GEN3_COMPONENTS = frozenset({
    "ble", "bthome", "cloud", "em1:0", "em1:1", "em1data:0", "em1data:1", "mqtt", "sys", "wifi", "ws"})
EM_GEN3 = Face("shelly_em_gen3", "shellyemg3", channels=2, profiles=False, ct_type="50A",
               components=EM_GEN3_COMPONENTS, sys_button=False)
# Real Pro EM-50 (SPEM-002CEBEU50, fw 1.7.5): as the EM Gen3, with eth and modbus.
PRO_EM50 = Face("shelly_pro_em50", "shellyproem50", channels=2, profiles=False, ct_type="50A",
                components=EM_GEN3_COMPONENTS | {"eth", "modbus"})
