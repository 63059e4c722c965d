"""Forecasting under the systemd unit's ``MemoryDenyWriteExecute=yes``.

systemd enforces it with a seccomp filter that refuses memory both writable
and executable; Linux 6.3+ offers the same rule per process as
``prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN)``. A fresh process sets it,
shows that a writable+executable mapping is refused, then trains meteremu's
forecast model (numpy, scikit-learn's MLP, OpenBLAS): the unit's hardening and
forecasting get along.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.trial.unittest import SynchronousTestCase

SCRIPT = textwrap.dedent("""
    import ctypes, mmap, sys
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        print("unsupported"); sys.exit(0)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("not enforced"); sys.exit(0)
    except OSError:
        pass
    from datetime import UTC
    import numpy as np
    from meteremu.forecast import ForecastOptions
    from meteremu.forecast import model as fm
    options = ForecastOptions(enabled=True, window=30, horizon=10, hidden_layers=(32,), max_iter=30,
                              resolution=10.0, random_state=0, max_gap=30.0, mape_floor=50.0)
    ts = np.arange(2000) * 10.0
    values = 1000 + 500 * np.sin(ts / 600.0)
    model = fm.train(ts, values, options, now=0.0, tz=UTC)
    print("trained", model.meta["metrics"]["model"]["mae"] < model.meta["metrics"]["persistence"]["mae"])
""")


class MemoryDenyWriteExecuteTests(SynchronousTestCase):
    def test_forecast_trains_with_write_xor_execute_enforced(self) -> None:
        done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        result = done.stdout.strip().splitlines()[-1]
        if result in ("unsupported", "not enforced"):
            self.skipTest(f"this kernel cannot enforce MDWE per process ({result})")
        self.assertEqual(result, "trained True")
