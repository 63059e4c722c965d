"""Give freed heap back to the operating system (glibc).

glibc keeps freed memory in its arenas, so a process's RSS stays at its peak:
after start-up (imports, config, building the tree) and after a training run.
On a Raspberry Pi that memory matters; ``malloc_trim`` returns it. Best
effort: a no-op where there is no glibc.
"""

from __future__ import annotations

import gc


def release_memory() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
