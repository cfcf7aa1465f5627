"""Grow-only sets per key (``set-kv``): the model, the names of set anomalies, and
`set_analysis`."""

from __future__ import annotations

from typing import Any

from checker import check


class Log:
    """Records of a set history, written one event at a time."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def line(self) -> int:
        """The line the next record will have (1-based)."""
        return len(self.records) + 1

    def invoke(self, process: int, f: str, key: str, value: Any = None) -> int:
        line = self.line()
        self.records.append(
            {"type": "invoke", "process": process, "f": f, "key": key, "value": value}
        )
        return line

    def end(self, process: int, f: str, key: str, value: Any = None, typ: str = "ok") -> None:
        self.records.append({"type": typ, "process": process, "f": f, "key": key, "value": value})

    def add(self, process: int, key: str, element: Any, typ: str = "ok") -> int:
        line = self.invoke(process, "add", key, element)
        self.end(process, "add", key, element, typ)
        return line

    def read(self, process: int, key: str, elements: list[Any]) -> int:
        line = self.invoke(process, "read", key)
        self.end(process, "read", key, elements)
        return line


def test_reads_in_any_order_of_what_was_added_are_valid() -> None:
    log = Log()
    log.add(0, "k3", 17)
    log.read(1, "k3", [17])
    log.add(0, "k3", 1)
    log.add(2, "k4", 5)
    log.read(1, "k3", [17, 1])
    log.read(1, "k4", [5])
    result = check(log.records, "set-kv")
    assert result.valid is True, result.to_json()
    assert result.model == "set-kv" and result.keys == 2


def test_a_read_concurrent_with_an_add_may_see_it_or_not() -> None:
    log = Log()
    log.add(0, "k", 1)
    log.invoke(0, "add", "k", 2)
    log.read(1, "k", [1])
    log.read(2, "k", [2, 1])
    log.read(1, "k", [1, 2])
    log.end(0, "add", "k", 2)
    assert check(log.records, "set-kv").valid is True


def test_a_failed_add_never_happened_and_an_info_add_may_have() -> None:
    log = Log()
    log.add(0, "k", 1, "fail")
    log.add(1, "k", 2, "info")
    log.read(2, "k", [])
    log.read(2, "k", [2])
    assert check(log.records, "set-kv").valid is True
    log.read(2, "k", [1, 2])
    assert check(log.records, "set-kv").valid is False


def test_a_read_that_drops_an_element_is_invalid_on_its_key_only() -> None:
    log = Log()
    log.add(0, "a", 1)
    log.add(0, "b", 1)
    log.read(1, "a", [1])
    log.read(1, "b", [])
    result = check(log.records, "set-kv")
    assert result.valid is False
    assert [a.key for a in result.anomalies] == ["b"]
    assert "#{1}" in result.anomalies[0].text
