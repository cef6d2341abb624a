"""Column specs (projections/columns.py): a table's DDL and its rows come from one list, so
a column cannot move in one and not the other."""

from __future__ import annotations

import pytest

from projections import results_db as rdb
from projections.columns import Column, Sum, row_function, sums_function, table


class _E:
    a = 1
    b = "two"


def test_a_row_follows_its_columns_in_order():
    spec = (Column("b", str, "e.b"), Column("a", int, "e.a"), Column("twice", int, "e.a * k"))
    row = row_function("row", "e, k", spec)
    assert table(spec) == {"b": str, "a": int, "twice": int}
    assert row(_E, 2) == ("two", 1, 2)
    assert "# twice" in row.__source__


def test_a_column_named_twice_is_refused():
    with pytest.raises(ValueError, match="named twice"):
        table((Column("a", int, "1"), Column("a", int, "2")))


def test_sums_add_up_by_key():
    acc: dict = {}
    add = sums_function("add", key=["row[0]"], sums=(Sum("n", int, "1"), Sum("v", float, "row[1]")))
    for row in (("x", 1.5), ("x", 2.0), ("y", 1.0)):
        add(acc, row)
    assert acc == {("x",): [2, 3.5], ("y",): [1, 1.0]}


def test_results_db_tables_come_from_their_specs():
    assert list(rdb.TEST_COLUMNS) == [c.name for c in rdb.TEST_SPEC]
    assert list(rdb.ERRORED_COLUMNS) == [c.name for c in rdb.ERRORED_SPEC]
    assert list(rdb.LEGACY_CELL_COLUMNS) == [c.name for c in rdb.LEGACY_CELL_SPEC]
    assert rdb.CELL_SUMS == tuple(s.name for s in rdb.CELL_SPEC)
    assert set(rdb.CELL_KEYS[:-1]) <= set(rdb.TEST_COLUMNS)


def test_the_fold_is_compiled_from_the_schema():
    """master_database's fold adds every averaged result field, every token count and every
    error category through its own slot, and its record round-trips an accumulator."""
    import importlib

    fold = importlib.import_module("projections.master_database.fold")
    from ultra.events import ERROR_CATEGORIES

    for name, _, _ in fold.AVERAGED:
        assert f"+= r.{name}" in fold._loop_src
    for name in fold.TOKENS:
        assert f"+= u.{name}" in fold._loop_src
    assert len(fold._ERROR_SLOT) == len(ERROR_CATEGORIES)
    acc = fold.Acc(total=6, full_success=1, partial_success=2, failure=3, with_assistance=4,
                   errors=list(range(len(ERROR_CATEGORIES))), execution_time=1.5,
                   sums=[float(i) for i in range(len(fold.AVERAGED))], metrics={"m": 2.0},
                   tokens=list(range(len(fold.TOKENS))), last_test_time="t", simulated=5,
                   truncated=6, cost=0.25, priced=7)
    assert fold._close(fold._open(acc)) == acc
