"""The sections of bench/run.py, one a module, each measuring with harness.py and adding its figures to the
run's results and rows of the table (bench/README.md says what each measures)."""
from __future__ import annotations

from . import baselines, e2e, fanout, profile, publish, stats

# The sections, in the order they run (--sections picks a subset), as load.py picks its MODES.
SECTIONS = {"publish": publish.measure, "baselines": baselines.measure, "e2e": e2e.measure,
            "fanout": fanout.measure, "stats": stats.measure, "profile": profile.measure}
