"""The in-memory Raft log of one node: a snapshot prefix plus the entries after it.

The log tracks three boundaries the core needs for its Ready batches: `committed` (known
committed), `applied` (handed to the state machine and acknowledged) and `unstable_from`
(the first index not yet persisted by the driver). Indexes are contiguous from
`offset + 1`, where `offset`/`offset_term` name the last entry the snapshot covers.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from raftkv.errors import LogConflict
from raftkv.types import Entry, Snapshot


class RaftLog:
    """Entries after a snapshot, with commit/apply/persist boundaries.

    Contract: `offset <= applied <= committed <= last_index()`; entries at indexes below
    `unstable_from` are persisted; `pending_snapshot` is a received snapshot the driver has
    yet to persist and apply.
    """

    def __init__(self, snapshot: Snapshot | None, entries: Sequence[Entry], commit_hint: int):
        self.snapshot = snapshot
        self.offset = snapshot.index if snapshot else 0
        self.offset_term = snapshot.term if snapshot else 0
        self.entries: list[Entry] = [e for e in entries if e.index > self.offset]
        for pos, entry in enumerate(self.entries):
            assert entry.index == self.offset + 1 + pos, f"log gap at {entry.index}"
        self.committed = max(self.offset, min(commit_hint, self.last_index()))
        self.applied = self.offset
        self.unstable_from = self.last_index() + 1
        self.pending_snapshot: Snapshot | None = None

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None when compacted away or beyond the end."""
        offset = self.offset
        if index == offset:
            return self.offset_term
        if index < offset or index > offset + len(self.entries):
            return None
        return self.entries[index - offset - 1].term

    def entry(self, index: int) -> Entry | None:
        if index <= self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with `lo <= index < hi`; `lo` must not be compacted."""
        assert lo > self.offset, f"slice from {lo} but log compacted to {self.offset}"
        return self.entries[lo - self.offset - 1 : hi - self.offset - 1]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The Raft paper's election restriction: is (last_term, last_index) at least ours?"""
        ours = self.last_term()
        return last_term > ours or (last_term == ours and last_index >= self.last_index())

    def append(self, entries: Sequence[Entry]) -> None:
        """Append after the last entry, or replace a suffix (never a committed entry)."""
        if not entries:
            return
        first = entries[0].index
        assert self.offset < first <= self.last_index() + 1, f"append at {first}"
        if first <= self.committed:
            raise LogConflict(f"rewrite of committed index {first} (commit {self.committed})")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.unstable_from = min(self.unstable_from, first)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """The follower side of AppendEntries.

        Returns the index of the last entry the message vouches for, or None when the
        log does not hold (`prev_index`, `prev_term`). Entries the log already holds with
        the same term are kept, so a duplicated or reordered append never truncates.
        """
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for entry in entries:
            if entry.index <= self.offset:
                continue
            if self.term_at(entry.index) != entry.term:
                self.append(entries[entry.index - prev_index - 1 :])
                break
        return last_new

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= `index` whose term is <= `term`, with that term.

        Backtracking hint: everything after the returned index is known not to match a
        log whose entry at `index` has `term`. Returns term 0 when compacted.
        """
        index = min(index, self.last_index())
        # Terms never decrease along a log: the entries up to `index` whose term is at most
        # `term` are a prefix of them, found by bisection (a diverged log can be long).
        upto = max(0, index - self.offset)
        found = bisect.bisect_right(self.entries, term, 0, upto, key=_term)
        if found > 0:
            return self.offset + found, self.entries[found - 1].term
        index = min(index, self.offset)
        if index == self.offset and self.offset_term <= term:
            return index, self.offset_term
        return index, 0

    def commit_to(self, index: int) -> bool:
        """Raise the commit index (never lowers it); True when it moved."""
        if index <= self.committed:
            return False
        index = min(index, self.last_index())
        if index <= self.committed:
            return False
        self.committed = index
        return True

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a received snapshot."""
        self.snapshot = snapshot
        self.offset, self.offset_term = snapshot.index, snapshot.term
        self.entries = []
        self.committed = self.applied = snapshot.index
        self.unstable_from = snapshot.index + 1
        self.pending_snapshot = snapshot

    def compact(self, snapshot: Snapshot) -> None:
        """Drop the prefix a snapshot of the applied state machine covers."""
        if snapshot.index <= self.offset:
            return
        assert snapshot.index <= self.applied, f"compact at {snapshot.index} > {self.applied}"
        assert self.term_at(snapshot.index) == snapshot.term, "snapshot term mismatch"
        del self.entries[: snapshot.index - self.offset]
        self.offset, self.offset_term = snapshot.index, snapshot.term
        self.snapshot = snapshot


def _term(entry: Entry) -> int:
    return entry.term
