"""Readers: format detection, every format's records, malformed and truncated inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from checker import HistoryError, check, detect_format, pair, parse_history, read_history

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
