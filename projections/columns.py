"""Column specs: a table's columns written once, each beside the value it takes.

A `Column` is a name, its SQLite type and the Python expression that computes its value
from the arguments of the table's row function. `table` gives the DDL's columns (name ->
type, in order) and `row_function` compiles the function that makes a row, in the same
order, from the same list: a column cannot be added, dropped or moved in one and not the
other, and the row is built by generated code as fast as a hand-written tuple.

`sums_function` does the same for running sums (results.db's `cells`): each sum a name,
its type and the expression added per row; the function adds one row's values to the sums
of its key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["Column", "Sum", "compiled", "row_function", "sums_function", "table"]


class Column(NamedTuple):
    name: str
    type: type
    value: str  # a Python expression over the row function's arguments (and its prelude)


class Sum(NamedTuple):
    name: str
    type: type
    value: str  # added per row: an expression over the row function's arguments


def table(columns: Sequence[Column | Sum]) -> dict[str, type]:
    """Column name -> SQLite type, in table order."""
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise ValueError(f"a column named twice: {sorted(n for n in names if names.count(n) > 1)}")
    return {c.name: c.type for c in columns}


def compiled(name: str, source: str, namespace: Mapping[str, Any]) -> Callable[..., Any]:
    """The function `name` that `source` defines, its globals `namespace`."""
    scope = dict(namespace)
    exec(compile(source, f"<{name}: projections/columns.py>", "exec"), scope)  # noqa: S102
    fn = scope[name]
    fn.__source__ = source  # what runs, for a reader in a debugger
    return fn  # type: ignore[no-any-return]


def row_function(name: str, args: str, columns: Sequence[Column], *, prelude: Sequence[str] = (),
                 namespace: Mapping[str, Any] | None = None) -> Callable[..., tuple[Any, ...]]:
    """`def name(args)`: the row of `columns`, in their order. `prelude` lines run first
    (local names the expressions share); `namespace` is what the expressions may call."""
    table(columns)
    body = "".join(f"    {line}\n" for line in prelude)
    values = "".join(f"        {c.value},  # {c.name}\n" for c in columns)
    return compiled(name, f"def {name}({args}):\n{body}    return (\n{values}    )\n",
                     namespace or {})


def sums_function(name: str, key: Sequence[str], sums: Sequence[Sum], *, prelude: Sequence[str] = (),
                  extra: Sequence[str] = (), namespace: Mapping[str, Any] | None = None
                  ) -> Callable[[dict[tuple[Any, ...], list[Any]], Any], None]:
    """`def name(acc, row)`: adds one row's `sums` (in their order) to `acc[key]`, where
    `key` lists the expressions of the key. `extra` lines run after the sums (with `s`,
    the key's list of sums, and `SLOT`, each sum's index by name)."""
    table(sums)
    slot = {s.name: i for i, s in enumerate(sums)}
    zero = ", ".join("0.0" if s.type is float else "0" for s in sums)
    lines = [*prelude, f"key = ({', '.join(key)},)", "s = acc.get(key)",
             "if s is None:", f"    s = acc[key] = [{zero}]"]
    lines += [f"s[{i}] += {s.value}  # {s.name}" for i, s in enumerate(sums) if s.value != "0"]
    lines += list(extra)
    source = f"def {name}(acc, row):\n" + "".join(f"    {line}\n" for line in lines)
    return compiled(name, source, {**(namespace or {}), "SLOT": slot})
