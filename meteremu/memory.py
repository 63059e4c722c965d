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


def freeze_startup() -> None:
    """Keep the objects made at start-up out of every later garbage collection.

    A full collection walks every tracked object: about 70,000 after
    start-up, 40-46 ms on the benchmark machine (measured in-process), and a
    flood of connections makes the collector run full collections now and
    then, each a pause for every client. ``gc.freeze`` moves what exists now (the
    tree, modules, caches: all of it lives as long as the process) to a
    generation the collector never walks. Objects made later are collected
    as before; a start-up object that later becomes cyclic garbage is not
    (reference counting still frees what is not in a cycle).
    """
    gc.collect()
    gc.freeze()
