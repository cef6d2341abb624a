"""`ultra show TEST_KEY|EVENT_ID`: one test's transcript, readable in a terminal (rich).

The cell, the outcome and the scores first; then turn by turn what was sent since the
last answer (the system and user prompts, tool results, format help), the model's answer
(reasoning, words, tool calls), its finish reason, tokens, time and HTTP attempts; then
what followed the last answer, the request that got none (an errored test), and the
scoring breakdown. `--json` prints the stored transcript's bytes as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from ultra import events as ev
from ultra import transcripts as tr
from ultra.errors import UserError
from ultra.eventlog.store import EventLog

CLIP = 4000  # characters of one message shown (the rest is counted; --json has it all)


def load(db: Path | str, key: str) -> tuple[ev.TestCompleted | ev.TestErrored, bytes]:
    """The test event named by `key` (an event id, else the last event of a test key) and
    its transcript's JSON bytes, checked against the event's digest."""
    with EventLog.open(db, create=False) as log:
        found = log.test_event(key)
        if found is None:
            raise UserError(f"no test event with event id or test key {key!r} in {log.location}")
        seq, payload = found
        try:
            event = ev.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UserError(f"the event at seq {seq} does not decode (run `ultra audit`)") from None
        assert isinstance(event, (ev.TestCompleted, ev.TestErrored))
        if event.transcript is None:
            raise UserError(f"test {event.test_key} (seq {seq}) has no transcript: it was recorded"
                            " with transcripts off, or by a version without them")
        stored = log.transcript_at(seq)
    if stored is None or stored[0] != event.transcript:
        raise UserError(f"the transcript of seq {seq} is missing (run `ultra audit`)")
    problem = tr.check(event.transcript, stored[1])
    if problem is not None:
        raise UserError(f"the transcript of seq {seq} was changed: {problem} (run `ultra audit`)")
    return event, tr.unpack(stored[1])


def _clip(text: str) -> str:
    return text if len(text) <= CLIP else f"{text[:CLIP]}… ({len(text) - CLIP} more characters)"


def _attempts(attempts: list[tr.Attempt]) -> str:
    parts = []
    for a in attempts:
        status = f"HTTP {a.status}" if a.status is not None else "no answer"
        what = "" if a.outcome == "ok" else f" {a.outcome}"
        said = f" \"{a.message}\"" if a.message else ""
        waited = f" after {a.waited:.2f}s" if a.waited >= 0.005 else ""
        parts.append(f"{status}{what}{said}{waited} ({a.latency:.2f}s)")
    return "; ".join(parts)


def render(event: ev.TestCompleted | ev.TestErrored, data: bytes, console: Any) -> None:
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table

    t = tr.decode(data)
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("test", escape(event.test_key))
    head.add_row("model", escape(f"{event.model} on {event.instance} ({event.provider})"
                                 f"{', simulated' if event.simulated else ''}"))
    head.add_row("cell", escape(f"{event.task_id} · {event.task_type} · {event.difficulty} ·"
                                f" {event.prompt_type} · tool success {event.tool_success_rate:g}"))
    head.add_row("run", escape(f"{event.run_id} / {event.shard_id}, event {event.event_id}"))
    if isinstance(event, ev.TestCompleted):
        r = event.result
        outcome = r.outcome + (f" ({r.error_category})" if r.error_category else "")
        color = {"full_success": "green", "partial_success": "yellow"}.get(r.outcome, "red")
        head.add_row("outcome", f"[{color}]{escape(outcome)}[/]")
        head.add_row("scores", escape(", ".join(f"{k} {v:g}" for k, v in r.metrics.items())))
        head.add_row("calls", f"{r.tool_calls} in {r.turns} turns, coverage {r.tool_coverage:g}"
                              f" of {r.required_tools} required")
    else:
        status = f" HTTP {event.http_status}" if event.http_status is not None else ""
        head.add_row("outcome", f"[red]errored: {escape(event.reason)}{status}[/]")
        if event.message:
            head.add_row("message", escape(event.message))
    u = event.usage
    head.add_row("tokens", f"{u.prompt_tokens:,} in, {u.completion_tokens:,} out"
                           + (f" ({u.reasoning_tokens:,} reasoning)" if u.reasoning_tokens else ""))
    head.add_row("time", f"{event.execution_time:.2f}s, {event.retries} retries")
    console.print(Panel(head, title="ultra show", expand=False))

    messages = t.messages
    first_answer = t.turns[0].sent if t.turns else len(messages)
    shown = 0

    def sent_since(upto: int) -> None:
        nonlocal shown
        for i in range(shown, min(upto, len(messages))):
            m = messages[i]
            role = str(m.get("role", "?"))
            if role == "assistant" and i >= first_answer:
                continue  # an answer as sent back: shown as received, with its turn
            label = role + (f" → {m['tool_call_id']}" if m.get("tool_call_id") else "")
            style = {"system": "dim", "user": "cyan", "tool": "magenta"}.get(role, "white")
            content = m.get("content")
            text = content if isinstance(content, str) else msgspec.json.encode(content).decode()
            console.print(f"[bold {style}]{escape(label)}[/]")
            console.print(escape(_clip(text)), style=style if role != "user" else None)
            for call in m.get("tool_calls") or ():
                fn = call.get("function", {})
                console.print(f"  call {escape(str(fn.get('name')))} {escape(str(fn.get('arguments')))}")
        shown = max(shown, upto)

    for n, turn in enumerate(t.turns, 1):
        sent_since(turn.sent)
        console.rule(f"turn {n}")
        if turn.reasoning_content:
            console.print("[bold yellow]reasoning[/]")
            console.print(escape(_clip(turn.reasoning_content)), style="dim")
        console.print("[bold green]assistant[/]")
        if turn.content:
            console.print(escape(_clip(turn.content)))
        for c in turn.tool_calls:
            console.print(f"  [green]call[/] {escape(c.name)} {escape(c.arguments)}  [dim]({escape(c.id)})[/]")
        u = turn.usage
        console.print(f"[dim]finish {turn.finish_reason or '-'} · {u.prompt_tokens:,} in,"
                      f" {u.completion_tokens:,} out · {turn.seconds:.2f}s ·"
                      f" {escape(_attempts(turn.attempts))}[/]")
        shown = max(shown, turn.sent)
    sent_since(len(messages))
    if t.unanswered is not None:
        console.rule("request without an answer")
        console.print(f"[red]{len(t.unanswered.attempts)} attempts:[/] "
                      f"{escape(_attempts(t.unanswered.attempts)) or '(cut off before any was sent)'}")
    if t.scoring is not None:
        console.rule("scoring")
        s = dict(t.scoring)
        calls = s.pop("calls", [])
        for k, v in s.items():
            console.print(f"[bold]{escape(str(k))}[/] {escape(msgspec.json.encode(v).decode())}")
        for c in calls:
            err = f" {c.get('error')}" if c.get("error") else ""
            console.print(f"  turn {c.get('turn')}: {escape(str(c.get('name')))} {c.get('status')}{escape(err)}")


def error_examples(results: Path, n: int, *, models: list[str] | None, run: str | None,
                   db: Path | str) -> str:
    """N test keys per (model, error category) of counted tests that were not a full
    success, and per (model, errored reason) of errored tests: lines to paste after
    `ultra show`."""
    import sqlite3

    from ultra.naming import canonical_model
    from ultra.report.run import open_results

    where, params = [], []
    if models:
        names = sorted({m for name in models for m in (name, canonical_model(name))})
        where.append(f"model IN ({', '.join('?' * len(names))})")
        params += names
    if run is not None:
        where.append("run_id = ?")
        params.append(run)
    extra = "".join(f" AND {w}" for w in where)
    conn = open_results(results)
    try:
        rows = conn.execute(
            "SELECT model, error_category, test_key FROM tests WHERE error_category IS NOT NULL"
            f"{extra} ORDER BY model, error_category, seq", params).fetchall()
        rows += conn.execute(
            f"SELECT model, 'errored: ' || reason, test_key FROM errored WHERE 1 = 1{extra}"
            " ORDER BY model, reason, seq", params).fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"{results}: unreadable ({exc})") from None
    finally:
        conn.close()
    groups: dict[tuple[str, str], list[str]] = {}
    for model, category, key in rows:
        keys = groups.setdefault((model, category), [])
        if len(keys) < n and key not in keys:
            keys.append(key)
    db_flag = "" if str(db) == "ultra-data/events.db" else f" --db {db}"
    lines = [f"\nExamples ({n} per model and category; open one with `ultra show KEY{db_flag}`):"]
    if not groups:
        lines.append("  (no failed or errored tests)")
    width = max((len(m) for m, _ in groups), default=0)
    cwidth = max((len(c) for _, c in groups), default=0)
    for (model, category), keys in sorted(groups.items()):
        lines.append(f"  {model:<{width}}  {category:<{cwidth}}  {' '.join(keys)}")
    return "\n".join(lines) + "\n"


__all__ = ["CLIP", "error_examples", "load", "render"]
