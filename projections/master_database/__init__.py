"""master_database.json: a pure fold of the event stream (`fold`), its rendering
(`render`) and the invariants every file satisfies (`invariants`).

The fold state holds one accumulator of sums per leaf (model, prompt type, tool success
rate, difficulty, task type), so memory grows with leaves, not events. Every level's
`overall_stats` is computed from summed accumulators, never from averages of rates.

The shell (`ultra.projection.projecting`) feeds the fold `(seq, event, earlier)` items, where
`earlier` holds the stored completions of the same test key with a smaller seq (usually
none; found with an index probe), so duplicate completions count once without keeping a
set of every key in memory.
"""

from projections.master_database.fold import (
    Acc, all_leaves, AVERAGED, DIGITS, dump_state, FILE_SCHEMA_VERSION, fold, fold_legacy,
    FoldState, LeafKey, legacy_acc, legacy_key, LegacySource, load_state, STATE_VERSION,
    TOKENS, Tree, UNPLACED,
)
from projections.master_database.render import (
    encode_document, ModelMemo, render, render_bytes, render_file, RENDERER, RenderMemo,
    stats,
)
from projections.master_database.invariants import (
    check_invariants,
)

__all__ = ["Acc", "all_leaves", "AVERAGED", "check_invariants", "DIGITS", "dump_state",
           "encode_document", "FILE_SCHEMA_VERSION", "fold", "fold_legacy", "FoldState",
           "LeafKey", "legacy_acc", "legacy_key", "LegacySource", "load_state", "ModelMemo",
           "render", "render_bytes", "render_file", "RENDERER", "RenderMemo", "STATE_VERSION",
           "stats", "TOKENS", "Tree", "UNPLACED"]

