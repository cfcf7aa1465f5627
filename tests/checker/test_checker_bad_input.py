"""Hostile histories: every reader answers with a `HistoryError` naming the file and line,
in bounded time, never with another exception; forced models check the shape of values."""

from __future__ import annotations

from pathlib import Path

import pytest

from checker import HistoryError, check, parse_history, read_history
from harness.cli import main

WRITE = '{"index": 0, "time": 1, "type": "invoke", "process": 0, "f": "write", "value": %s}\n'
PLAIN = (
    '{"index": 0, "time": 1, "type": "invoke", "process": 0, "f": "write", "value": 1}\n'
    '{"index": 1, "time": 2, "type": "ok", "process": 0, "f": "write", "value": 1}\n'
    '{"index": 2, "time": 3, "type": "invoke", "process": 1, "f": "read", "value": null}\n'
    '{"index": 3, "time": 4, "type": "ok", "process": 1, "f": "read", "value": 1}\n'
)
EDN_OP = "{:type :%s, :process %d, :f :%s, :value %s}\n"


def _edn(*ops: tuple[str, int, str, str]) -> str:
    return "".join(EDN_OP % op for op in ops)


def _error(text: str, fmt: str | None = None, model: str = "auto") -> HistoryError:
    with pytest.raises(HistoryError) as err:
        check(parse_history(text, fmt, file="h"), model)
    assert err.value.file == "h", str(err.value)
    assert len(str(err.value)) < 300, "messages quote bad input briefly"
    return err.value


# Inputs that crashed a reader (RecursionError, ValueError, TypeError) or a model.
CRASHERS = {
    "json nested 100k deep": (WRITE % ("[" * 100_000 + "]" * 100_000), "jsonl", 1),
    "json nested 900 deep": ("\n" + WRITE % ("[" * 900 + "]" * 900), "jsonl", 2),
    "json integer of 5000 digits": (PLAIN + WRITE % ("7" * 5000), "jsonl", 5),
    "edn nested 100k deep": (
        _edn(("invoke", 0, "write", "1")) + _edn(("ok", 0, "write", "[" * 100_000 + "]" * 100_000)),
        "jepsen-edn",
        2,
    ),
    "edn integer of 5000 digits": (_edn(("invoke", 0, "write", "9" * 5000)), "jepsen-edn", 1),
    "knossos nested 100k deep": (
        "[" + _edn(("invoke", 0, "write", "(" * 100_000 + ")" * 100_000)) + "]",
        "knossos-edn",
        1,
    ),
    "etcd value nested 100k deep": (
        "INFO  jepsen.util - 0\t:invoke\t:write\t" + "[" * 100_000 + "]" * 100_000 + "\n",
        "jepsen-etcd-log",
        1,
    ),
    "porcupine line nested 100k deep": (
        '{:process 0, :type :invoke, :f :put, :key "1", :value '
        + "[" * 100_000
        + "]" * 100_000
        + "}\n",
        "porcupine-kv",
        1,
    ),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(CRASHERS))
def test_hostile_input_is_a_history_error_naming_the_line(case: str) -> None:
    text, fmt, line = CRASHERS[case]
    assert _error(text, fmt).line == line


@pytest.mark.timeout(30)
def test_etcd_log_line_of_80k_spaces_is_read_in_linear_time() -> None:
    spaces = " " * 80_000
    bad = f"INFO  jepsen.util - 0\t:invoke\t:write\t3{spaces}x\n"
    assert "bad value" in _error(bad, "jepsen-etcd-log").message
    padded = f"INFO  jepsen.util - 0\t:invoke\t:write{spaces}3{spaces}\n"
    (event,) = parse_history(padded, "jepsen-etcd-log").events
    assert (event.f, event.value) == ("write", 3)


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_jsonl_lines_end_only_at_newline(char: str) -> None:
    """Line and paragraph separators (which `str.splitlines` splits at) are legal,
    unescaped, inside JSON strings."""
    text = PLAIN.replace('"value": 1}', f'"value": "a{char}b"}}')
    history = parse_history(text, "jsonl")
    assert [e.line for e in history.events] == [1, 2, 3, 4]
    assert history.events[3].value == f"a{char}b"
    assert check(history, "register").valid is True


def test_edn_maps_and_sets_are_values_and_keys() -> None:
    """Nested maps read as hashable values, so models can hold them as states."""
    text = _edn(
        ("invoke", 0, "write", "{:a [1 {:b #{2}}]}"),
        ("ok", 0, "write", "{:a [1 {:b #{2}}]}"),
        ("invoke", 1, "read", "nil"),
        ("ok", 1, "read", "{:a [1 {:b #{2}}]}"),
    )
    assert check(parse_history(text, "jepsen-edn"), "register").valid is True
    keyed = text.replace(":process", ":key {[1] #{:x}}, :process")
    history = parse_history(keyed, "jepsen-edn")
    assert check(history, "kv").valid is True
    assert history.events[0].key == {(1,): frozenset({"x"})}
    knossos = "[" + text.replace("{:a [1 {:b #{2}}]}", "[{:a 1} #{{:b 2}}]") + "]"
    assert check(parse_history(knossos, "knossos-edn"), "register").valid is True


# A forced model whose value shapes the history's ops do not fit, and the line named.
MISFITS = {
    "multi-register on a plain write": (PLAIN, "multi-register", 1),
    "multi-register on a bad micro-op": (
        PLAIN.replace('"write", "value": 1}', '"txn", "value": [["write", "x"]]}'),
        "multi-register",
        1,
    ),
    "set read of one element": (PLAIN.replace('"write"', '"add"'), "set", 3),
    "append-kv append of a number": (
        PLAIN.replace('"write"', '"append"').replace('"read"', '"get"'),
        "append-kv",
        1,
    ),
    "append-kv get of a number": (
        PLAIN.replace('"write"', '"put"')
        .replace('"read"', '"get"')
        .replace('"value": 1}', '"value": "1"}', 2),
        "append-kv",
        3,
    ),
    "cas-register cas of one value": (PLAIN.replace('"write"', '"cas"'), "cas-register", 1),
    "register with cas": (PLAIN.replace('"write"', '"cas"'), "register", 1),
    "mutex with a read": (PLAIN, "mutex", 1),
    "kv with an unknown operation": (PLAIN.replace('"f": "read"', '"f": "frob"'), "kv", 3),
}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_forced_model_checks_value_shapes_before_the_search(case: str) -> None:
    text, model, line = MISFITS[case]
    err = _error(text, "jsonl", model)
    assert err.line == line and f"model {model}" in err.message, str(err)


def test_set_read_of_a_collection_is_fine() -> None:
    head, _, tail = PLAIN.replace('"write"', '"add"').rpartition('"value": 1}')
    text = head + '"value": [1]}' + tail
    assert check(parse_history(text, "jsonl"), "set").valid is True


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    path.write_bytes(PLAIN.encode().replace(b'"read"', b'"r\xffad"'))
    with pytest.raises(HistoryError) as err:
        read_history(str(path))
    assert (err.value.file, err.value.line) == (str(path), 3)
    assert "UTF-8" in err.value.message


def _cli_cases(tmp_path: Path) -> list[tuple[Path, list[str], int]]:
    cases = []
    for n, (text, fmt, line) in enumerate(CRASHERS.values()):
        path = tmp_path / f"crash{n}.txt"
        path.write_text(text, encoding="utf-8")
        cases.append((path, ["--format", fmt], line))
    for n, (text, model, line) in enumerate(MISFITS.values()):
        path = tmp_path / f"misfit{n}.jsonl"
        path.write_text(text, encoding="utf-8")
        cases.append((path, ["--model", model], line))
    return cases


@pytest.mark.timeout(60)
def test_cli_exits_254_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, options, line in _cli_cases(tmp_path):
        assert main(["check", *options, str(path)]) == 254, path
        err = capsys.readouterr().err
        assert f"harness check: {path}:{line}: " in err and "Traceback" not in err, err
