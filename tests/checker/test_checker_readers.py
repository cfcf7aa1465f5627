"""Readers: format detection, every format's records, malformed and truncated inputs."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

import checker.edn
import checker.edn_readers
import checker.log_readers
import checker.records
from checker import HistoryError, check, detect_format, pair, parse_history, read_history
from checker.history import Event

CORPUS = Path(__file__).resolve().parent.parent / "data" / "histories"

JSONL = (
    '{"index": 0, "time": 5, "type": "invoke", "process": 0, "f": "write", "key": "a",'
    ' "value": 1}\n'
    '{"index": 1, "time": 9, "type": "info", "process": "nemesis", "f": "start", "value": "x"}\n'
    '{"index": 2, "time": 12, "type": "ok", "process": 0, "f": "write", "key": "a", "value": 1}\n'
    '{"index": 3, "time": 20, "type": "invoke", "process": 1, "f": "read", "key": "a",'
    ' "value": null}\n'
    '{"index": 4, "time": 30, "type": "ok", "process": 1, "f": "read", "key": "a", "value": 1}\n'
)
JEPSEN_EDN = (
    "{:index 0 :type :invoke :process 0 :f :write :value 1 :time 1}\n"
    "#jepsen.history.Op{:index 1, :type :ok, :process 0, :f :write, :value 1, :time 2}\n"
    "{:index 2 :type :invoke :process 1 :f :read :value nil}\n"
    "#jepsen.history.Op{:index 3 :type :ok :process 1 :f :read :value 1}\n"
)
KNOSSOS = (
    "; a comment\n[{:process 0, :type :invoke, :f :write, :value 1}\n"
    " {:process 0 :type :ok :f :write :value 1}\n"
    " {:type :info, :f :start, :process :nemesis}\n"
    " {:process 1, :type :invoke, :f :cas, :value [1 2]}\n"
    " {:process 1, :type :ok, :f :cas, :value [1 2]}]\n"
)
PORCUPINE = (
    '{:process 0, :type :invoke, :f :put, :key "1", :value "a"}\n'
    '{:process 0, :type :ok, :f :put, :key "1", :value "a"}\n'
    '{:process 1, :type :invoke, :f :append, :key "1", :value "b"}\n'
    '{:process 1, :type :ok, :f :append, :key "1", :value "b"}\n'
    '{:process 0, :type :invoke, :f :get, :key "1", :value nil}\n'
    '{:process 0, :type :ok, :f :get, :key "1", :value "ab"}\n'
)
ETCD = (
    "INFO  jepsen.util - 0\t:invoke\t:write\t3\n"
    "INFO  jepsen.core - something else\n"
    "INFO  jepsen.util - 0   :ok     :write  3\n"
    "INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]\n"
    "INFO  jepsen.util - 1\t:info\t:cas\t:timed-out\n"
    "INFO  jepsen.util - 2\t:invoke\t:read\tnil\n"
    "INFO  jepsen.util - 2\t:ok\t:read\t4\n"
)
SAMPLES = {
    "jsonl": (JSONL, "kv"),
    "jepsen-edn": (JEPSEN_EDN, "cas-register"),
    "knossos-edn": (KNOSSOS, "cas-register"),
    "porcupine-kv": (PORCUPINE, "append-kv"),
    "jepsen-etcd-log": (ETCD, "etcd-register"),
}


def test_a_jepsen_history_with_keys_is_not_taken_for_porcupine() -> None:
    keyed = "{:index 0 :type :invoke :process 0 :f :write :key 3 :value 1 :time 1}\n"
    assert detect_format(keyed) == "jepsen-edn"
    assert detect_format('{:type :invoke, :f :get, :key "3", :time 5}\n') == "jepsen-edn"
    assert detect_format(PORCUPINE.splitlines()[4]) == "porcupine-kv"


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_each_format_is_detected_read_and_checked(fmt: str) -> None:
    text, model = SAMPLES[fmt]
    assert detect_format(text) == fmt
    history = parse_history(text, file=f"h.{fmt}")
    result = check(history)
    assert (result.valid, result.model) == (True, model)


def test_pairing_drops_fails_and_keeps_indeterminate_ops() -> None:
    history = parse_history(ETCD)
    ops = pair(history.events)
    assert [(op.f, op.value, op.ret is None) for op in ops] == [
        ("write", 3, False),
        ("cas", (3, 4), True),
        ("read", 4, False),
    ]


# One broken line per format; the error must name that line.
MALFORMED = {
    "jsonl": (JSONL.replace('"type": "ok", "process": 1', '"type": "done", "process": 1'), 5),
    "jepsen-edn": (JEPSEN_EDN.replace(":process 1 :f :read", ":process 1 :f :read :x"), 3),
    "knossos-edn": (KNOSSOS.replace(":value [1 2]}]", ":value [1 2]}}"), 6),
    "porcupine-kv": (
        PORCUPINE.replace(':key "1", :value "b"}\n{', ':key "1", :value "b"\n{', 1),
        3,
    ),
    "jepsen-etcd-log": (ETCD.replace("2\t:ok\t:read\t4", "2\t:ok\t:read\t[4"), 7),
}


@pytest.mark.parametrize("fmt", sorted(MALFORMED))
def test_malformed_input_names_file_and_line(fmt: str) -> None:
    text, line = MALFORMED[fmt]
    with pytest.raises(HistoryError) as err:
        check(parse_history(text, fmt, file="bad.txt"))
    assert err.value.file == "bad.txt"
    assert err.value.line == line, str(err.value)


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_truncated_input_is_an_error_naming_the_last_line(fmt: str) -> None:
    text = SAMPLES[fmt][0]
    cut = text[: len(text.rstrip("\n")) - 4]
    if fmt == "jsonl":
        cut += "\n"  # a newline after it: not the torn write of a killed test
    with pytest.raises(HistoryError) as err:
        check(parse_history(cut, fmt, file="cut"))
    last_line = len(cut.rstrip("\n").split("\n"))
    assert err.value.line == last_line or (fmt == "knossos-edn"), str(err.value)


@pytest.mark.parametrize("cut_bytes", [1, 4, 30])
def test_jsonl_torn_last_line_is_ignored_and_said(cut_bytes: int) -> None:
    """A killed test leaves its last line unfinished, without a newline: only that line
    may be dropped, and the history says so."""
    torn = JSONL[: len(JSONL) - 1 - cut_bytes]
    history = parse_history(torn, "jsonl", file="h.jsonl")
    size = len(JSONL.splitlines()[-1]) - cut_bytes
    assert history.warnings == [f"h.jsonl: last line (line 5) is torn, {size} bytes ignored"]
    assert [e.line for e in history.events] == [1, 2, 3, 4]
    result = check(history)
    assert result.warnings == history.warnings
    assert result.to_json()["warnings"] == history.warnings
    assert result.valid is True and result.ops == 2  # the read is unfinished: honest


def test_jsonl_unreadable_line_before_the_last_is_an_error() -> None:
    lines = JSONL.splitlines(keepends=True)
    for n in range(len(lines)):
        for text in (
            "".join([*lines[:n], lines[n][:-2] + "\n", *lines[n + 1 :]]),
            "".join([*lines[:n], lines[n][:-2] + "\n"]),
        ):
            with pytest.raises(HistoryError) as err:
                parse_history(text, "jsonl", file="h.jsonl")
            assert err.value.line == n + 1


def test_jsonl_torn_inside_a_character_is_torn(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    last = '{"index": 5, "time": 40, "type": "invoke", "process": 2, "f": "write", "value": "é"'
    path.write_bytes((JSONL + last).encode()[:-2])
    history = read_history(str(path))
    assert len(history.events) == 5
    size = len(last.encode()) - 2
    assert history.warnings == [f"{path}: last line (line 6) is torn, {size} bytes ignored"]
    path.write_bytes((JSONL + last).encode()[:-2] + b"\n")
    with pytest.raises(HistoryError, match="not UTF-8") as err:
        read_history(str(path))
    assert err.value.line == 6


def test_jsonl_requires_dense_indices_and_integer_time() -> None:
    with pytest.raises(HistoryError, match="dense"):
        parse_history(JSONL.replace('"index": 2', '"index": 7'), "jsonl")
    with pytest.raises(HistoryError, match="time"):
        parse_history(JSONL.replace('"time": 12', '"time": "x"'), "jsonl")


def test_nonsense_pairing_is_an_error() -> None:
    twice = JSONL.replace(
        '"index": 2, "time": 12, "type": "ok"', '"index": 2, "time": 12, "type": "invoke"'
    )
    with pytest.raises(HistoryError, match="pending"):
        check(parse_history(twice, "jsonl"))
    orphan = '{"index": 0, "type": "ok", "process": 3, "f": "read", "value": 1}\n'
    with pytest.raises(HistoryError, match="no pending invoke"):
        check(parse_history(orphan, "jsonl"))


def test_unknown_operation_for_the_model_names_the_line() -> None:
    text = '{"index": 0, "type": "invoke", "process": 0, "f": "frob", "value": 1}\n'
    with pytest.raises(HistoryError) as err:
        check(parse_history(text, "jsonl"), "cas-register")
    assert err.value.line == 1


def test_unreadable_file_is_a_history_error(tmp_path: Path) -> None:
    with pytest.raises(HistoryError):
        read_history(str(tmp_path / "missing.jsonl"))
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(HistoryError):
        read_history(str(binary))


def test_empty_history_is_valid() -> None:
    assert check(parse_history("", file="etcd_095.log")).valid is True
    assert check([]).valid is True


# The fast paths of the readers, against the readers they stand in for: the general EDN
# reader token by token, and the line by line readers of kv and etcd logs.
NEVER = re.compile(r"(?!)")
NO_FAST_LINE = {
    "_KV_LINE": re.compile(r"^(?:(?!)()()()()()|(.*+))$", re.M),
    "_ETCD_LINE": re.compile(r"^(?:(?!)()()()()|(.*+))$", re.M),
}


def _read(text: str, fmt: str) -> Any:
    try:
        return parse_history(text, fmt, file="h").events
    except HistoryError as exc:
        return ("error", exc.message, exc.line)


def _read_slowly(text: str, fmt: str) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("_FLAT_MAP", "_FLAT_RUN", "_LINE_RUN"):
            mp.setattr(checker.edn, name, NEVER)
        for name, regex in NO_FAST_LINE.items():
            mp.setattr(checker.log_readers, name, regex)
        return _read(text, fmt)


def _agree(text: str, fmt: str) -> None:
    slow = _read_slowly(text, fmt)
    assert _read(text, fmt) == slow, text[:300]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checker.edn_readers, "_SHAPED_MIN", 10**9)  # map by map, not in columns
        assert _read(text, fmt) == slow, text[:300]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checker.edn_readers, "_SHAPED_MIN", 1)
        mp.setattr(checker.edn, "_RUN_CHARS", 97)  # runs cut anywhere
        assert _read(text, fmt) == slow, text[:300]


@pytest.mark.parametrize("kind", ["knossos", "porcupine/jepsen", "porcupine/kv"])
def test_fast_readers_read_the_corpus_as_the_general_ones(kind: str) -> None:
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    for entry in manifest:
        if entry["path"].startswith(kind):
            text = (CORPUS / entry["path"]).read_text()
            assert _read(text, entry["format"]) == _read_slowly(text, entry["format"])


# Op lines as Jepsen and Knossos write them, and lines that look like them but are not.
EDN_OPS = [
    "{:type :invoke, :f :write, :value 3, :process 0, :time 10, :index 0}",
    "{:type :ok, :f :write, :value 3, :process 0, :time 12, :index 1}",
    "{:type :invoke, :f :cas, :value [1 2], :process 1, :time 13, :index 2}",
    "{:type :fail, :f :cas, :value [1 2], :process 1, :time 14, :index 3}",
    "{:type :info, :f :read, :value nil, :process 2, :time nil, :index 4}",
    '{:type :ok, :f :read, :value "a, \\"b\\" c", :process 3, :time 15, :index 5}',
    '{:type :ok, :f :read, :value "x, y", :process 3, :time 15, :index 5}',
    "{:type :ok, :f :read, :value [[1 2] 3], :process 4, :time 16, :index 6}",
    "{:type :ok, :f :txn, :value [[:read :x 1] [:write :y 2]], :process 4, :time 16}",
    "{:type :ok, :f :txn, :value [[[1]]], :process 4, :time 16, :index 6}",
    "{:type :info, :f :start, :value {:n1 #{:n2}}, :process :nemesis, :time 1, :index 7}",
    "{:type :info, :f :stop, :value nil, :process nemesis, :time 2, :index 8}",
    "#jepsen.history.Op{:type :invoke, :f :read, :value nil, :process 5, :time 3, :index 9}",
    "#jepsen.history.Op {:type :ok, :f :read, :value 1, :process 5, :time 4, :index 10}",
    "{:type :ok, :f :read, :value 1, :process 5, :time 4, :index 10, :error :x}",
    "{:type :ok, :f :read, :value 1, :process 5, :time 4, :index 10, :type :fail}",
    '{:type "ok", :f "read", :value 1, :process 5, :time 4, :index 10}',
    "{:type :ok,\n :f :read, :value 1, :process 6, :time 5, :index 11}",
    "{:type :ok, :f :read, :value 1, :process 6, :time 5, :index 11} ; done",
    "#_{:type :ok, :f :read, :value 1, :process 6} {:type :ok, :f :x, :process 7}",
    "{:type :ok :f :read :value 1 :process 7 :time 6 :index 12}",
    "{:type :ok, :f :read, :value 1, :process 7, :time 6.5, :index 12}",
    "{:type :ok, :f :read, :value 1, :process true, :time 6, :index 12}",
    "{:type :ok, :f 3, :value 1, :process 7, :time 6, :index 12}",
    "{:type :done, :f :read, :value 1, :process 7, :time 6, :index 12}",
    "{:type :ok, :f :read, :value 1, :process 7, :time 6, :index 1x}",
    "{:type :ok, :f :read, :value 1, :process 7, :time 007, :index 12N}",
    "{:type :ok, :f :read, :value 1, :process 7, :time 6, :index \u00b2}",
    "{:type :ok, :f :read, :value 1, :process 7, :time \u0661\u0662, :index 12}",
    "{:type :ok, :f :read, :key :k, :value -1, :process -7, :time 6, :index 12}",
    "{:type :ok, :f :read, :process 8, :time 6, :index 13}",
    "{:f :read, :type :ok, :value 1, :process 8}",
    "{}",
    "{:type :ok, :f :read, :value 1, :process 8, :time 6, :index 13}\r",
    " , {:type :ok, :f :read, :value 1, :process 8, :time 6, :index 13} ,",
    "{:type :ok, :f :read, :value 1, :process 8, :time 6,\x1c:index 13}",
    "{:type :ok, :f :read, :value 1, :process 8, :time 6, :index",
    "[:not :a :map]",
]


def _edn_documents(seed: int) -> list[tuple[str, str]]:
    """Jepsen and Knossos documents of runs of one common op line (long enough to be read
    in columns) broken by other lines, the odd ones among them."""
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randrange(1, 6)):
        common = rng.choice(EDN_OPS[:4])
        lines += [common] * rng.randrange(0, 40) + [rng.choice(EDN_OPS)]
    sep = rng.choice(["\n", "\n ", "\n\n", ",\n", "\r\n"])
    body = sep.join(lines)
    return [(body + "\n", "jepsen-edn"), ("[" + body + "]\n", "knossos-edn")]


@pytest.mark.parametrize("seed", range(60))
def test_fast_edn_readers_read_odd_lines_as_the_general_reader(seed: int) -> None:
    for text, fmt in _edn_documents(seed):
        _agree(text, fmt)


ETCD_LINES = [
    "INFO  jepsen.util - 0\t:invoke\t:write\t3",
    "INFO  jepsen.util - 0\t:ok\t:write\t3",
    "INFO  jepsen.util - 1\t:invoke\t:cas\t[3 4]",
    "INFO  jepsen.util - 1\t:info\t:cas\t:timed-out",
    "INFO  jepsen.util - :nemesis\t:info\t:start\t{:n1 [:n2]}",
    "INFO  jepsen.util - 2   :ok     :read  4",
    "INFO  jepsen.util - 2\t:ok\t:read\t4\r",
    "INFO  jepsen.core - something else",
    "",
    "INFO  jepsen.util - 2\t:ok\t:read\t[4",
    "INFO  jepsen.util - 2\t:done\t:read\t4",
    "INFO  jepsen.util - x\t:ok\t:read\t4",
    'INFO  jepsen.util - 2\t:ok\t:read\t"a b"',
    " INFO  jepsen.util - 2\t:ok\t:read\t4",
]
KV_LINES = [
    '{:process 0, :type :invoke, :f :put, :key "1", :value "a"}',
    '{:process 0, :type :ok, :f :get, :key "1", :value nil}',
    '{:process 0, :type :ok, :f :get, :key "1", :value "a \\" b"}',
    '{:process 1234567890123456789, :type :ok, :f :get, :key "1", :value nil}',
    '{:process 0, :type :ok, :f :get, :key "1", :value nil}  ',
    '{:process 0, :type :ok, :f :get, :key "1", :value nil}\r',
    "",
    "   ",
    '{:process 0, :type :ok, :f :get, :key "1", :value nil',
    '{:process 0, :type :ok, :f :get, :key "1", :value 1x}',
]


@pytest.mark.parametrize("seed", range(40))
def test_fast_log_readers_read_odd_lines_as_the_line_readers(seed: int) -> None:
    rng = random.Random(seed)
    for fmt, lines in (("jepsen-etcd-log", ETCD_LINES), ("porcupine-kv", KV_LINES)):
        text = "\n".join(rng.choice(lines[:3] * 8 + lines) for _ in range(rng.randrange(30)))
        _agree(text + rng.choice(["", "\n"]), fmt)


def test_events_made_column_by_column_are_events() -> None:
    fields = ("ok", 3, "read", (1, 2), "k", 5, 7, False)
    (made,) = checker.records.new_events(*([f] for f in fields))
    assert made == Event(*fields) and hash(made) == hash(Event(*fields))
