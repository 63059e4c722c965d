"""Grant the interpreter ``CAP_NET_BIND_SERVICE`` as a file capability (image build step).

The container runs as an ordinary user, yet a battery expects the real
device's ports (HTTP 80, Modbus 502, UDP 1010). With host networking
Docker's ``ip_unprivileged_port_start`` trick does not apply, so the image
does what ``setcap cap_net_bind_service=+ep`` does, without installing
libcap's tools into a slim image: it writes the ``security.capability``
extended attribute (``struct vfs_cap_data``, revision 2, from
``linux/capability.h``). Docker's default capability set keeps
``NET_BIND_SERVICE`` in the bounding set, so the interpreter gains exactly
that capability and no other.
"""

from __future__ import annotations

import os
import struct
import sys

VFS_CAP_REVISION_2 = 0x02000000
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
CAP_NET_BIND_SERVICE = 10
XATTR = "security.capability"


def vfs_cap_data(capabilities: tuple[int, ...]) -> bytes:
    """Pure: the xattr value for permitted+effective ``capabilities`` (none inheritable)."""
    low = high = 0
    for cap in capabilities:
        if cap < 32:
            low |= 1 << cap
        else:
            high |= 1 << (cap - 32)
    return struct.pack("<IIIII", VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE, low, 0, high, 0)


def main() -> None:
    target = os.path.realpath(sys.argv[1] if len(sys.argv) > 1 else sys.executable)
    os.setxattr(target, XATTR, vfs_cap_data((CAP_NET_BIND_SERVICE,)))
    sys.stdout.write(f"{target}: cap_net_bind_service=ep\n")


if __name__ == "__main__":
    main()
