"""Reading a master_database.json of the system ultra replaces (`ultra import-legacy`).

Pure: bytes in, a `Reading` out (the cells to record as `legacy.cell` events, the
anomalies, the notes, and where the file's own aggregates disagree with its leaves). The
shell (`ultra.cli`) turns it into events.

Each leaf is read the way it was written. A leaf spells its counts as `success` or
`successful`, `partial_success` or `partial`, `full_success`, `failed` or `failure`, and
`success` counts either the full successes alone (`full`) or full + partial
(`full+partial`). Which one is decided per leaf from its own arithmetic: the counts first
(`full_success + partial == success`, `failed == total - success`, ...), then, where the
counts allow both, the rates (`full_success_rate`, `partial_success_rate`). A leaf that
fits neither, or whose rates disagree with its counts, is an anomaly: imported as its
counts say when they are consistent, skipped otherwise.

Version 2.0 files have no cells, only flat breakdowns per model (by_task_type,
by_prompt_type, by_flaw_type, by_difficulty): each model becomes one cell of its totals
(the sum of its by_task_type leaves), with `all` for the dimensions no breakdown places.
"""

from ultra.legacy.cells import (
    ALL, ANOMALY_KINDS, AVERAGES, Cell, ERRORS_UNSUMMED, FITS_NEITHER, LEVELS, MALFORMED,
    METRICS, RATES_DISAGREE, read_leaf, Reading, SKIPPING_KINDS, TOLERANCE, UNDECIDED,
    V2_BREAKDOWNS,
)
from ultra.legacy.reader import (
    event_id, fold_names, leaf_keys, read,
)

__all__ = [
    "ALL", "ANOMALY_KINDS", "AVERAGES", "Cell", "ERRORS_UNSUMMED", "event_id",
    "FITS_NEITHER", "fold_names", "leaf_keys", "LEVELS", "MALFORMED", "METRICS",
    "RATES_DISAGREE", "read", "read_leaf", "Reading", "SKIPPING_KINDS", "TOLERANCE",
    "UNDECIDED", "V2_BREAKDOWNS",
]
