"""Fuzzing the readers: valid histories of every format, mutated byte-wise (cuts, inserts,
copies, deep nesting, long integers, invalid UTF-8), read and checked against any model.
The only answers allowed are a `History` and a verdict, or a `HistoryError` with a short
message; anything else (RecursionError, TypeError, a hang) is a bug."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_checker_readers import SAMPLES

from checker import FORMATS, MODELS, History, HistoryError, check, read_history

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"
SUFFIX = {
    "jsonl": ".jsonl",
    "jepsen-edn": ".edn",
    "knossos-edn": ".edn",
    "porcupine-kv": ".txt",
    "jepsen-etcd-log": ".log",
}
MESSAGE_CHARS_MAX = 400


def _head(path: str, lines: int, close: str = "") -> bytes:
    text = (CORPUS / path).read_text(encoding="utf-8")
    return ("\n".join(text.splitlines()[:lines]) + close + "\n").encode()


SEEDS: list[tuple[str, bytes]] = [
    *((fmt, text.encode()) for fmt, (text, _) in SAMPLES.items()),
    ("knossos-edn", (CORPUS / "knossos/cas-register/bad/bad-analysis.edn").read_bytes()),
    ("knossos-edn", _head("knossos/multi-register/good/multi-register.edn", 24, "]")),
    ("knossos-edn", _head("knossos/mutex/bad/etcd.edn", 24, "]")),
    ("jepsen-etcd-log", _head("porcupine/jepsen/etcd_002.log", 40)),
    ("porcupine-kv", _head("porcupine/kv/c01-bad.txt", 40)),
]
PIECES = [
    *(c.encode() for c in '{}[]()"\\#;:,- \n\t'),
    b"#{",
    b"#_",
    b"#inst ",
    b"#jepsen.history.Op",
    b"nil",
    b"null",
    b"NaN",
    b"1e999",
    b"12N",
    b"{:a 1}",
    b'{"a": [1]}',
    b"\xe2\x80\xa8",  # U+2028
    b"\xc2\x85",  # U+0085
    b"\xff",
    b"\xc3",
    b" " * 3000,
    b":key ",
    b":ok",
    b":invoke",
    b":value",
    b'"value": ',
    b'"index": 0',
    b"INFO  jepsen.util - ",
]


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    i = draw(st.integers(0, len(data)))
    j = draw(st.integers(i, min(len(data), i + 64)))
    kind = draw(st.sampled_from(["cut", "insert", "copy", "end", "nest", "digits", "bytes"]))
    if kind == "cut":
        return data[:i] + data[j:]
    if kind == "insert":
        return data[:i] + draw(st.sampled_from(PIECES)) + data[i:]
    if kind == "copy":
        return data[:j] + data[i:j] * draw(st.integers(1, 3)) + data[j:]
    if kind == "end":
        return data[:i]
    if kind == "nest":
        depth = draw(st.sampled_from([1, 98, 99, 100, 101, 1_000, 100_000]))
        opener = draw(st.sampled_from([b"[", b"(", b"{:a ", b"#{"]))
        closer = {b"[": b"]", b"(": b")", b"{:a ": b"}", b"#{": b"}"}[opener]
        return data[:i] + opener * depth + closer * depth + data[i:]
    if kind == "digits":
        digits = draw(st.sampled_from([20, 4300, 4301, 5_000]))
        return data[:i] + b"7" * digits + data[i:]
    return data[:i] + draw(st.binary(max_size=6)) + data[i:]


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, str | None, bytes]:
    fmt, data = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        data = draw(mutations(data))
    forced = draw(st.sampled_from([fmt, None, None]))
    return fmt, forced, data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.timeout(180)
@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(histories(), st.sampled_from(["auto", *MODELS]))
def test_readers_answer_a_history_or_a_history_error(
    scratch: Path, case: tuple[str, str | None, bytes], model: str
) -> None:
    fmt, forced, data = case
    path = scratch / f"history{SUFFIX[fmt]}"
    path.write_bytes(data)
    try:
        history = read_history(str(path), forced)
        assert isinstance(history, History) and history.format in FORMATS
        assert all(w.startswith(f"{path}: last line") for w in history.warnings)
        result = check(history, model, time_limit_s=2.0)
        assert result.valid in (True, False, "unknown")
        event(f"verdict {result.valid}")
    except HistoryError as exc:
        event("HistoryError")
        assert exc.file == str(path) or exc.file is None, str(exc)
        assert len(str(exc)) < MESSAGE_CHARS_MAX, str(exc)
