"""`ultra export inspect`: a run's tests as Inspect AI eval logs, for `inspect view`.

One eval log per run and model (`<run>_<model>.eval`), one sample per test (its last test
event in the run): `input` the messages before the model's first answer, `messages` the
whole conversation (each answer as received: reasoning, words, tool calls, with its
finish reason, usage, time and HTTP attempts as metadata), `output` the last answer,
`scores` `outcome` (full_success, partial_success, failure) and `final_score` (and the
suite's other metrics), the cell as `metadata`, the tokens as `model_usage`. An errored
test is a sample with `error` (its reason, HTTP status and server message). Written with
inspect_ai's own log API (`pip install 'ultra[inspect]'`), so Inspect reads it as its own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

from ultra import events as ev
from ultra import transcripts as tr
from ultra.errors import UserError
from ultra.eventlog.store import EventLog

_STOP = {"stop": "stop", "tool_calls": "tool_calls", "function_call": "tool_calls",
         "length": "max_tokens", "content_filter": "content_filter"}


def _inspect() -> Any:
    try:
        import inspect_ai.log  # noqa: F401
    except ImportError:
        raise UserError("`ultra export inspect` needs inspect_ai: pip install 'ultra[inspect]'") from None
    import inspect_ai

    return inspect_ai


def _iso(recorded_at: str) -> str:
    """The log's time form as Inspect's (ISO 8601 with an offset)."""
    return recorded_at.replace("Z", "+00:00") if recorded_at else ""


def _file_name(run: str, model: str) -> str:
    return f"{run}_{re.sub(r'[^A-Za-z0-9._-]+', '-', model)}.eval"


def _messages(t: tr.Transcript, model: str) -> tuple[list[Any], list[Any], Any]:
    """(input, messages, last answer) as Inspect chat messages."""
    from inspect_ai.model import (
        ChatMessageAssistant,
        ChatMessageSystem,
        ChatMessageTool,
        ChatMessageUser,
        ContentReasoning,
        ContentText,
    )
    from inspect_ai.tool import ToolCall

    answers = {turn.sent: turn for turn in t.turns}  # answer j was appended at messages[sent]
    first = t.turns[0].sent if t.turns else len(t.messages)
    names: dict[str, str] = {}
    out: list[Any] = []
    last = None

    def answer(turn: tr.Turn) -> Any:
        content: list[Any] = []
        if turn.reasoning_content:
            content.append(ContentReasoning(reasoning=turn.reasoning_content))
        if turn.content or not content:
            content.append(ContentText(text=turn.content or ""))
        calls = []
        for c in turn.tool_calls:
            names[c.id] = c.name
            try:
                args = msgspec.json.decode(c.arguments or "{}")
                error = None if isinstance(args, dict) else "arguments are not a JSON object"
            except msgspec.DecodeError as exc:
                args, error = None, f"arguments are not JSON: {exc}"
            calls.append(ToolCall(id=c.id, function=c.name,
                                  arguments=args if isinstance(args, dict) else {},
                                  parse_error=error))
        meta = dict(finish_reason=turn.finish_reason, seconds=turn.seconds,
                    usage=msgspec.structs.asdict(turn.usage),
                    attempts=[msgspec.structs.asdict(a) for a in turn.attempts])
        return ChatMessageAssistant(content=content if len(content) > 1 else (turn.content or ""),
                                    tool_calls=calls or None, model=model, source="generate",
                                    metadata=meta)

    for i, m in enumerate(t.messages):
        role = m.get("role")
        content = m.get("content")
        text = content if isinstance(content, str) else ("" if content is None
                                                         else msgspec.json.encode(content).decode())
        if role == "assistant" and i in answers:
            last = answer(answers.pop(i))
            out.append(last)
        elif role == "assistant":
            out.append(ChatMessageAssistant(content=text, source="input"))
        elif role == "system":
            out.append(ChatMessageSystem(content=text, source="input" if i < first else None))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            out.append(ChatMessageTool(content=text, tool_call_id=call_id,
                                       function=names.get(call_id or "")))
        else:
            out.append(ChatMessageUser(content=text, source="input" if i < first else None))
    for _, turn in sorted(answers.items()):  # answers the suite never appended
        last = answer(turn)
        out.append(last)
    return out[:first], out, last


def _sample(event: ev.TestCompleted | ev.TestErrored, t: tr.Transcript | None) -> Any:
    from inspect_ai._util.error import EvalError
    from inspect_ai.log import EvalSample
    from inspect_ai.model import ChatCompletionChoice, ModelOutput, ModelUsage
    from inspect_ai.scorer import Score

    inputs, messages, last = _messages(t, event.model) if t is not None else ([], [], None)
    u = event.usage
    usage = ModelUsage(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                       total_tokens=u.prompt_tokens + u.completion_tokens,
                       reasoning_tokens=u.reasoning_tokens or None)
    finish = t.turns[-1].finish_reason if t is not None and t.turns else None
    output = ModelOutput(
        model=event.model,
        choices=[ChatCompletionChoice(message=last, stop_reason=_STOP.get(finish or "", "unknown"))]
        if last is not None else [],
        usage=usage, time=event.execution_time)
    metadata: dict[str, Any] = dict(
        test_key=event.test_key, event_id=event.event_id, suite=event.suite,
        task_id=event.task_id, task_type=event.task_type, difficulty=event.difficulty,
        prompt_type=event.prompt_type, tool_success_rate=event.tool_success_rate,
        instance=event.instance, provider=event.provider, shard_id=event.shard_id,
        simulated=event.simulated, retries=event.retries, transcript=event.transcript)
    scores = None
    error = None
    if isinstance(event, ev.TestCompleted):
        r = event.result
        metadata.update(error_category=r.error_category, turns=r.turns, tool_calls=r.tool_calls,
                        tool_coverage=r.tool_coverage, finish_reasons=r.finish_reasons)
        scores = {"outcome": Score(value=r.outcome, explanation=r.error_category or "")}
        for name, value in r.metrics.items():
            scores[name] = Score(value=value)
        if t is not None and t.scoring is not None:
            metadata["scoring"] = t.scoring
    else:
        status = f" (HTTP {event.http_status})" if event.http_status is not None else ""
        metadata.update(reason=event.reason, http_status=event.http_status, message=event.message)
        error = EvalError(message=f"{event.reason}{status}: {event.message}", traceback="",
                          traceback_ansi="")
    required = (t.scoring or {}).get("required") if t is not None else None
    started = _iso(event.started_at) or None
    return EvalSample(
        id=event.test_key, epoch=1, input=inputs or "", target=", ".join(required or []),
        messages=messages, output=output, scores=scores, metadata=metadata,
        model_usage={event.model: usage}, started_at=started,
        completed_at=_iso(event.recorded_at), total_time=event.execution_time, error=error)


def export(db: Path | str, run: str, models: list[str] | None, output: Path) -> list[Path]:
    """Write the eval logs of `run` (of `models`, default all) into `output`; their paths."""
    inspect_ai = _inspect()
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalMetric,
        EvalPlan,
        EvalResults,
        EvalScore,
        EvalSpec,
        EvalStats,
        write_eval_log,
    )
    from inspect_ai.model import ModelUsage

    from ultra.projection.reading import log_repairs

    with EventLog.open(db, create=False) as log:
        started = [msgspec.json.decode(p) for _, _, _, p in log.raw(types=["run.started"], run_id=run)]
        if not started:
            raise UserError(f"no run {run!r} in {log.location} (see `ultra events --type run.started`)")
        repairs = log_repairs(log)
        wanted = {repairs.canonical(m) for m in models} if models else None
        tests: dict[str, dict[str, tuple[Any, tr.Transcript | None]]] = {}
        for seq, _type, _model, payload in log.raw(types=["test.completed", "test.errored"], run_id=run):
            try:
                event = ev.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue  # `ultra audit` names it
            assert isinstance(event, (ev.TestCompleted, ev.TestErrored))
            model = repairs.canonical(event.model)
            if wanted is not None and model not in wanted:
                continue
            t = None
            stored = log.transcript_at(seq) if event.transcript else None
            if stored is not None and stored[0] == event.transcript and tr.check(*stored) is None:
                t = tr.decode(tr.unpack(stored[1]))
            tests.setdefault(model, {})[event.test_key] = (event, t)  # the last one wins
        if wanted is not None and (unknown := wanted - set(tests)):
            raise UserError(f"run {run!r} has no tests of {', '.join(sorted(unknown))}")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output}: cannot create directory ({exc.strerror})") from None
    created = _iso(started[0].get("recorded_at", ""))
    written = []
    for model, by_key in sorted(tests.items()):
        samples = [_sample(e, t) for e, t in by_key.values()]
        done = [e for e, _ in by_key.values() if isinstance(e, ev.TestCompleted)]
        total = ModelUsage(
            input_tokens=sum(e.usage.prompt_tokens for e, _ in by_key.values()),
            output_tokens=sum(e.usage.completion_tokens for e, _ in by_key.values()),
            total_tokens=sum(e.usage.prompt_tokens + e.usage.completion_tokens
                             for e, _ in by_key.values()))
        scores = []
        if done:
            names = list(dict.fromkeys(k for e in done for k in e.result.metrics))
            for name in names:
                values = [e.result.metrics[name] for e in done if name in e.result.metrics]
                scores.append(EvalScore(name=name, scorer="ultra", scored_samples=len(values),
                                        metrics={"mean": EvalMetric(name="mean",
                                                                    value=sum(values) / len(values))}))
            outcome = {o: sum(e.result.outcome == o for e in done) / len(done)
                       for o in ("full_success", "partial_success", "failure")}
            scores.insert(0, EvalScore(name="outcome", scorer="ultra", scored_samples=len(done),
                                       metrics={o: EvalMetric(name=o, value=v)
                                                for o, v in outcome.items()}))
        first = min((e.started_at or e.recorded_at for e, _ in by_key.values()), default="")
        ended = max((e.recorded_at for e, _ in by_key.values()), default="")
        suite = next(iter(by_key.values()))[0].suite
        spec = EvalSpec(
            eval_id=f"{run}-{model}", run_id=run, created=created or _iso(first),
            task=f"ultra/{suite}", task_id=f"{run}-{model}", task_version=0,
            dataset=EvalDataset(name=suite, samples=len(samples), sample_ids=list(by_key)),
            model=f"ultra/{model}", config=EvalConfig(),
            packages={"ultra": _ultra_version(), "inspect_ai": inspect_ai.__version__},
            metadata={"ultra_run": run, "model": model, "db": str(db)})
        eval_log = EvalLog(
            version=2, status="success", eval=spec, plan=EvalPlan(name="ultra"),
            results=EvalResults(total_samples=len(samples), completed_samples=len(done),
                                scores=scores),
            stats=EvalStats(started_at=_iso(first), completed_at=_iso(ended),
                            model_usage={model: total}),
            samples=samples)
        path = output / _file_name(run, model)
        write_eval_log(eval_log, str(path))
        written.append(path)
    return written


def _ultra_version() -> str:
    from ultra import __version__

    return __version__


__all__ = ["export"]
