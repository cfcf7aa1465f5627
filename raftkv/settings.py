"""The Raft settings an operator may choose, as `NAME=VALUE` words.

`raftkv serve --raft-option NAME=VALUE` and `harness test --raft-option NAME=VALUE` take the
same words, so a run can test the configuration a deployment runs:

- `check-quorum=on|off`: a leader that has not heard from a quorum for an election timeout
  steps down, and a node that heard from a leader (or started) less than an election
  timeout ago ignores vote requests (on by default; leases need it).
- `pre-vote=on|off`: a node that times out first asks whether it could win (on by default).
- `max-append-entries=N`: at most N entries per append message (default 256).

Turning the first two off is what many Raft deployments run; it also takes away the
protections that hide some bugs (a forgotten vote, say), which is why a test may want to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from raftkv.core import MAX_ENTRIES_PER_APPEND, Config
from raftkv.timing import RaftTiming

__all__ = ["DEFAULT_RAFT", "RaftSettings"]

_ON = {"on": True, "true": True, "yes": True, "1": True}
_OFF = {"off": False, "false": False, "no": False, "0": False}
_MAX_APPEND_ENTRIES = 1_000_000


@dataclass(frozen=True)
class RaftSettings:
    """What `--raft-option` words set; the defaults are raftkv's."""

    check_quorum: bool = True
    pre_vote: bool = True
    max_append_entries: int = MAX_ENTRIES_PER_APPEND

    @classmethod
    def parse(cls, words: Iterable[str]) -> RaftSettings:
        """The settings `words` ("NAME=VALUE" each) make; ValueError naming a bad word."""
        settings = cls()
        for word in words:
            name, sep, value = (part.strip().lower() for part in word.partition("="))
            if not sep or not value:
                raise ValueError(f"expected NAME=VALUE, got {word!r}; names: {_NAMES}")
            if name == "max-append-entries":
                settings = dataclasses.replace(settings, max_append_entries=_count(name, value))
            elif name in ("check-quorum", "pre-vote"):
                field = name.replace("-", "_")
                settings = dataclasses.replace(settings, **{field: _switch(name, value)})
            else:
                raise ValueError(f"unknown raft option {name!r}; known: {_NAMES}")
        return settings

    def words(self) -> list[str]:
        """The words that give these settings (those that differ from the defaults)."""
        base, words = DEFAULT_RAFT, []
        if self.check_quorum != base.check_quorum:
            words.append(f"check-quorum={'on' if self.check_quorum else 'off'}")
        if self.pre_vote != base.pre_vote:
            words.append(f"pre-vote={'on' if self.pre_vote else 'off'}")
        if self.max_append_entries != base.max_append_entries:
            words.append(f"max-append-entries={self.max_append_entries}")
        return words

    def timing(self, timing: RaftTiming) -> RaftTiming:
        """`timing` with these settings' check-quorum."""
        if timing.check_quorum == self.check_quorum:
            return timing
        return dataclasses.replace(timing, check_quorum=self.check_quorum)

    def config(
        self,
        node: str,
        peers: tuple[str, ...],
        timing: RaftTiming,
        bugs: frozenset[str],
        join: bool = False,
    ) -> Config:
        """The core's Config for `node` under these settings (`join`: see `Config.join`)."""
        return Config(
            id=node,
            peers=peers,
            timing=self.timing(timing),
            pre_vote=self.pre_vote,
            max_entries_per_append=self.max_append_entries,
            bugs=bugs,
            join=join,
        )


DEFAULT_RAFT = RaftSettings()
"""raftkv's own settings: what a node runs unless told otherwise."""

_NAMES = "check-quorum=on|off, pre-vote=on|off, max-append-entries=N"


def _switch(name: str, value: str) -> bool:
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ValueError(f"raft option {name} takes on or off, got {value!r}")


def _count(name: str, value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if not 1 <= count <= _MAX_APPEND_ENTRIES:
        raise ValueError(f"raft option {name} takes a whole number from 1 to "
                         f"{_MAX_APPEND_ENTRIES}, got {value!r}")  # fmt: skip
    return count
