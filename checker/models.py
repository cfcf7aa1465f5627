"""Sequential specifications the histories are checked against.

A `Model` compiles each operation into a step function ``state -> next state`` that returns
`ILLEGAL` when the operation cannot happen in that state. States are hashable and immutable.
A step that leaves the state unchanged returns the very same object, which the search uses
to recognise operations that change nothing.

Models by name (`MODELS`):

- ``register``: read/write; a null read means the register is absent (null).
- ``cas-register``: read/write/cas ``[old, new]``.
- ``kv``: independent cas-registers per key, each starting null; also accepts Jepsen's
  independent ``[key, value]`` tuples when ops carry no key.
- ``append-kv``: Porcupine's kv: get/put/append per key, each key starting ``""``.
- ``etcd-register``: a cas-register starting null (Jepsen etcd logs).
- ``multi-register``: ``txn`` of ``[read k v]`` / ``[write k v]`` micro-ops, atomic.
- ``mutex``: acquire/release, starting unlocked.
- ``set``: ``add`` element; ``read`` returns the whole set (any order).
- ``set-kv``: independent grow-only sets per key, each starting empty (Jepsen's set test
  with keys); also accepts Jepsen's independent ``[key, value]`` tuples when ops carry no
  key.

With ``nil_read_any`` (Knossos's convention, used for EDN histories) a read of null constrains
nothing; otherwise a null read means "absent".
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

from checker.history import HistoryError, brief, show_key
from checker.ops import Op

__all__ = ["ILLEGAL", "MODELS", "Model", "Step", "infer_model", "make_model"]


class _Illegal:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ILLEGAL"


ILLEGAL: Any = _Illegal()
Step = Callable[[Any], Any]
_UNSET: Any = object()


def _identity(state: Any) -> Any:
    return state


def _never(state: Any) -> bool:
    return False


class Model:
    """A sequential specification.

    Contract: `shape_error(op)` says what is wrong with an op this model cannot take (its
    `f`, or its value's shape), and `validate` refuses a history holding such an op before
    anything else runs; then `step(op)` returns a pure function of the state; `pure(op)` is
    True only if that function never changes a state it accepts; `partition` splits a
    history into independent sub-histories (P-compositionality), each with its own model.
    `observes` and `produces` name the values an op reads and writes (registers only; empty
    elsewhere).
    """

    name = "model"

    def __init__(self, init: Any = _UNSET, *, nil_read_any: bool = False):
        self.init = self.default_init() if init is _UNSET else init
        self.nil_read_any = nil_read_any

    def default_init(self) -> Any:
        return None

    def initial(self) -> Any:
        return self.init

    def step(self, op: Op) -> Step:
        raise NotImplementedError

    def shape_error(self, op: Op) -> str | None:
        """Why this model cannot take `op`, or None if it can. Values must be hashable:
        they become states."""
        try:
            hash(op.value)
        except TypeError:
            return "value is not hashable"
        return None

    def validate(self, ops: list[Op], file: str | None = None) -> None:
        """Raise `HistoryError` naming the first op (its line) this model cannot take."""
        for op in ops:
            if self.shape_error(op) is not None:
                raise self._bad(op, file)

    def pure(self, op: Op) -> bool:
        return False

    def unconstrained(self, op: Op) -> bool:
        """True if the op is always legal and changes nothing: it can be dropped."""
        return False

    def partition(self, ops: list[Op]) -> list[tuple[Hashable, Model, list[Op]]]:
        return [(None, self, ops)]

    def observes(self, op: Op) -> tuple[Any, ...]:
        return ()

    def produces(self, op: Op) -> tuple[Any, ...]:
        return ()

    def rescue_plan(self, ops: list[Op]) -> dict[int, tuple[Callable[[Any], bool], list[Op]]]:
        """For pure ops (by id): `(reachable, rescuers)` such that, once every rescuer is
        linearized, a state `s` with `reachable(s)` False can never again lead to a state in
        which the op is legal. The search abandons such configurations. Empty: no pruning.
        Rescuers are ops that can change the state (a pure op rescues nothing): the search
        commits pure ops without looking again at the ops before them."""
        return {}

    def unsupported(self, ops: list[Op]) -> set[Any]:
        """Values the ops observe that no op among them (nor the initial state) produces.
        The shrinker never adds to them, so a window never shows a read whose writer was
        cut away."""
        produced = {self.initial()}
        for op in ops:
            produced.update(self.produces(op))
        return {v for op in ops for v in self.observes(op) if v not in produced}

    def describe(self, op: Op) -> str:
        if op.key is None:
            key = ""
        elif isinstance(op.key, str):
            key = f"{show_key(op.key)} "
        else:  # a number beside a number value would read as two values
            key = f"[{op.key!r}] "
        return f"{op.f} {key}{_show(op.value)}"

    def _bad(self, op: Op, file: str | None = None) -> HistoryError:
        why = self.shape_error(op) or "bad operation"
        where = "" if op.line is not None else f" (operation {op.id})"
        return HistoryError(
            f"model {self.name}: {why}: {brief(op.f)} {brief(op.value)}{where}",
            file=file,
            line=op.line,
        )


def _pair(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 2


# A collection longer than this is shown by its first SHOWN_ITEMS - 1 items, an ellipsis, its
# last item and its size: a set read can hold hundreds of elements.
SHOWN_ITEMS = 10


def _show(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, tuple):
        return _items("[", value, "]")
    if isinstance(value, frozenset):
        return _items("#{", _sorted(value), "}")
    return repr(value) if isinstance(value, str) else str(value)


def _items(opener: str, items: Sequence[Any], closer: str) -> str:
    if len(items) <= SHOWN_ITEMS:
        return opener + " ".join(_show(v) for v in items) + closer
    head = " ".join(_show(v) for v in items[: SHOWN_ITEMS - 1])
    return f"{opener}{head} ... {_show(items[-1])}{closer} ({len(items)} items)"


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _sorted(values: Iterable[Any]) -> list[Any]:
    """`values` in their natural order, or by their text when they cannot be compared."""
    items = list(values)
    try:
        return sorted(items)
    except TypeError:
        return sorted(items, key=repr)


class CasRegister(Model):
    """One register with read, write and compare-and-set."""

    name = "cas-register"
    allow_cas = True

    def step(self, op: Op) -> Step:
        f, v = op.f, op.value
        if f == "read":
            if v is None and self.nil_read_any:
                return _identity
            return lambda s: s if s == v else ILLEGAL
        if f == "write":
            return lambda s: v
        if f == "cas" and self.allow_cas and _pair(v):
            old, new = v
            return lambda s: new if s == old else ILLEGAL
        raise self._bad(op)

    def shape_error(self, op: Op) -> str | None:
        if op.f not in ("read", "write", "cas") or (op.f == "cas" and not self.allow_cas):
            return "unknown operation"
        if op.f == "cas" and not _pair(op.value):
            return "cas value must be [old new]"
        return super().shape_error(op)

    def validate(self, ops: list[Op], file: str | None = None) -> None:
        # Checked in bulk, without a call per op; on any doubt, op by op, which names the
        # first bad one.
        fs = {op.f for op in ops}
        try:
            hash(tuple([op.value for op in ops]))
        except TypeError:
            fs.add("")
        if not fs <= ({"read", "write", "cas"} if self.allow_cas else {"read", "write"}) or (
            "cas" in fs and not all(_pair(op.value) for op in ops if op.f == "cas")
        ):
            super().validate(ops, file)

    def pure(self, op: Op) -> bool:
        return op.f == "read"

    def unconstrained(self, op: Op) -> bool:
        return op.f == "read" and (op.ret is None or (op.value is None and self.nil_read_any))

    def rescue_plan(self, ops: list[Op]) -> dict[int, tuple[Callable[[Any], bool], list[Op]]]:
        # Only an op producing v can make the register hold v.
        producers: dict[Any, list[Op]] = {}
        for op in ops:
            for v in self.produces(op):
                producers.setdefault(v, []).append(op)
        plan: dict[int, tuple[Callable[[Any], bool], list[Op]]] = {}
        for op in ops:
            if op.f == "read" and op.ret is not None and not self.unconstrained(op):
                try:
                    plan[op.id] = (_never, producers.get(op.value, []))
                except TypeError:
                    continue
        return plan

    def observes(self, op: Op) -> tuple[Any, ...]:
        if op.f == "read" and op.ret is not None and not self.unconstrained(op):
            return (op.value,)
        if op.f == "cas" and isinstance(op.value, tuple) and len(op.value) == 2:
            return (op.value[0],)
        return ()

    def produces(self, op: Op) -> tuple[Any, ...]:
        if op.f == "write":
            return (op.value,)
        if op.f == "cas" and isinstance(op.value, tuple) and len(op.value) == 2:
            return (op.value[1],)
        return ()


class Register(CasRegister):
    name = "register"
    allow_cas = False


class EtcdRegister(CasRegister):
    name = "etcd-register"


class KV(Model):
    """Independent cas-registers, one per key, each starting at `init` (null by default)."""

    name = "kv"
    register: type[CasRegister] = CasRegister

    def partition(self, ops: list[Op]) -> list[tuple[Hashable, Model, list[Op]]]:
        parts: dict[Hashable, list[Op]] = {}
        for op in ops:
            if op.key is None and isinstance(op.value, tuple) and len(op.value) == 2:
                key, value = op.value
                op = Op(op.id, op.process, op.f, value, key, op.call, op.ret, op.line)
            parts.setdefault(op.key, []).append(op)
        return [(k, self._sub(), p) for k, p in parts.items()]

    def _sub(self) -> Model:
        sub = self.register(self.init, nil_read_any=self.nil_read_any)
        sub.name = self.name
        return sub


class AppendRegister(Model):
    """One string register with get, put and append (a key of Porcupine's kv)."""

    name = "append-kv"

    def default_init(self) -> Any:
        return ""

    def step(self, op: Op) -> Step:
        f, v = op.f, op.value
        if f == "get":
            return lambda s: s if s == v else ILLEGAL
        if f == "put":
            return lambda s: v
        if f == "append":
            return lambda s: s + v
        raise self._bad(op)

    def shape_error(self, op: Op) -> str | None:
        if op.f not in ("get", "put", "append"):
            return "unknown operation"
        if isinstance(op.value, str) or (op.f == "get" and op.ret is None):
            return None
        return "value must be a string" + (" (null only for an unfinished get)" * (op.f == "get"))

    def pure(self, op: Op) -> bool:
        return op.f == "get"

    def unconstrained(self, op: Op) -> bool:
        return op.f == "get" and op.ret is None

    def rescue_plan(self, ops: list[Op]) -> dict[int, tuple[Callable[[Any], bool], list[Op]]]:
        # Appends only extend the string; only a put of a prefix of v can restart it.
        puts = [op for op in ops if op.f == "put"]
        plan: dict[int, tuple[Callable[[Any], bool], list[Op]]] = {}
        for op in ops:
            if op.f == "get" and op.ret is not None and isinstance(op.value, str):
                v = op.value
                rescuers = [p for p in puts if isinstance(p.value, str) and v.startswith(p.value)]
                plan[op.id] = (v.startswith, rescuers)
        return plan

    def unsupported(self, ops: list[Op]) -> set[Any]:
        starts = {self.init} | {op.value for op in ops if op.f == "put"}
        pieces = {op.value for op in ops if op.f == "append" and op.value}
        return {
            op.value
            for op in ops
            if op.f == "get" and op.ret is not None and not _spelled(op.value, starts, pieces)
        }


def _spelled(text: str, starts: set[str], pieces: set[str]) -> bool:
    """Whether `text` is one of `starts` followed by any sequence of `pieces`."""
    reach = [False] * (len(text) + 1)
    for start in starts:
        if isinstance(start, str) and text.startswith(start):
            reach[len(start)] = True
    for i in range(len(text)):
        if reach[i]:
            for piece in pieces:
                if text.startswith(piece, i):
                    reach[i + len(piece)] = True
    return reach[len(text)]


class AppendKV(KV):
    name = "append-kv"

    def default_init(self) -> Any:
        return ""

    def _sub(self) -> Model:
        return AppendRegister(self.init)


class MultiRegister(Model):
    """Registers updated by atomic transactions of read/write micro-ops.

    The state is a tuple of values in the order of `init`'s keys (a mapping); keys the
    initial state does not name start null.
    """

    name = "multi-register"

    def __init__(self, init: Any = _UNSET, *, nil_read_any: bool = True):
        super().__init__(init, nil_read_any=nil_read_any)
        mapping = dict(self.init) if self.init else {}
        self.keys: dict[Hashable, int] = {k: i for i, k in enumerate(mapping)}
        self.start = list(mapping.values())

    def default_init(self) -> Any:
        return {"x": 0, "y": 0}

    def initial(self) -> Any:
        return tuple(self.start)

    def _slot(self, key: Hashable) -> int:
        if key not in self.keys:
            self.keys[key] = len(self.keys)
            self.start.append(None)
        return self.keys[key]

    def step(self, op: Op) -> Step:
        micro = self._micro(op)
        width = len(self.keys)

        def apply(s: Any) -> Any:
            if len(s) < width:
                s = s + (None,) * (width - len(s))
            out = list(s)
            for f, slot, v in micro:
                if f == "read":
                    if v is not None and out[slot] != v:
                        return ILLEGAL
                else:
                    out[slot] = v
            new = tuple(out)
            return s if new == s else new

        return apply

    def _micro(self, op: Op) -> list[tuple[str, int, Any]]:
        if self.shape_error(op) is not None:
            raise self._bad(op)
        return [(m[0], self._slot(m[1]), m[2]) for m in op.value]

    def shape_error(self, op: Op) -> str | None:
        if op.f != "txn" or not isinstance(op.value, tuple):
            return "expected txn with a vector of micro-ops"
        for m in op.value:
            if not isinstance(m, tuple) or len(m) != 3 or m[0] not in ("read", "write"):
                return f"bad micro-op {brief(m)}, expected [read|write key value]"
        return super().shape_error(op)

    def pure(self, op: Op) -> bool:
        return all(m[0] == "read" for m in op.value)

    def unconstrained(self, op: Op) -> bool:
        return self.pure(op) and (op.ret is None or all(m[2] is None for m in op.value))


class Mutex(Model):
    """A lock: acquire is legal when unlocked, release when locked. State: locked?"""

    name = "mutex"

    def default_init(self) -> Any:
        return False

    def step(self, op: Op) -> Step:
        if op.f == "acquire":
            return lambda s: ILLEGAL if s else True
        if op.f == "release":
            return lambda s: False if s else ILLEGAL
        raise self._bad(op)

    def shape_error(self, op: Op) -> str | None:
        return None if op.f in ("acquire", "release") else "unknown operation"


class SetModel(Model):
    """A grow-only set: add an element; read returns every element (as a collection)."""

    name = "set"

    def default_init(self) -> Any:
        return frozenset()

    def step(self, op: Op) -> Step:
        if op.f == "add":
            e = op.value
            return lambda s: s if e in s else s | {e}
        if op.f == "read" and op.value is None:
            return _identity
        if op.f == "read" and isinstance(op.value, tuple | frozenset):
            want = frozenset(op.value)
            return lambda s: s if s == want else ILLEGAL
        raise self._bad(op)

    def shape_error(self, op: Op) -> str | None:
        if op.f not in ("add", "read"):
            return "unknown operation"
        if op.f == "read" and not isinstance(op.value, tuple | frozenset | None):
            return "read value must be a collection"
        return super().shape_error(op)

    def pure(self, op: Op) -> bool:
        return op.f == "read"

    def unconstrained(self, op: Op) -> bool:
        return op.f == "read" and (op.ret is None or op.value is None)

    def observes(self, op: Op) -> tuple[Any, ...]:
        if op.f == "read" and op.ret is not None and op.value is not None:
            return tuple(op.value)
        return ()

    def rescue_plan(self, ops: list[Op]) -> dict[int, tuple[Callable[[Any], bool], list[Op]]]:
        # The set only grows.
        plan: dict[int, tuple[Callable[[Any], bool], list[Op]]] = {}
        for op in ops:
            if op.f == "read" and op.ret is not None and op.value is not None:
                plan[op.id] = (frozenset(op.value).__ge__, [])
        return plan

    def produces(self, op: Op) -> tuple[Any, ...]:
        return (op.value,) if op.f == "add" else ()


class SetKV(KV):
    """Independent grow-only sets, one per key, each starting at `init` (empty by default)."""

    name = "set-kv"

    def default_init(self) -> Any:
        return frozenset()

    def _sub(self) -> Model:
        sub = SetModel(self.init, nil_read_any=self.nil_read_any)
        sub.name = self.name
        return sub


MODELS: dict[str, type[Model]] = {
    "register": Register,
    "cas-register": CasRegister,
    "kv": KV,
    "append-kv": AppendKV,
    "etcd-register": EtcdRegister,
    "multi-register": MultiRegister,
    "mutex": Mutex,
    "set": SetModel,
    "set-kv": SetKV,
}


def infer_model(fmt: str, ops: Sequence[Op]) -> tuple[str, Any]:
    """The model name and initial state a history of format `fmt` most likely means."""
    fs = {op.f for op in ops}
    if fmt == "porcupine-kv":
        return "append-kv", ""
    if fmt == "jepsen-etcd-log":
        return "etcd-register", None
    if "txn" in fs:
        return "multi-register", {"x": 0, "y": 0} if fmt == "knossos-edn" else {}
    if fs and fs <= {"acquire", "release"}:
        return "mutex", False
    if "add" in fs:
        return ("set-kv" if any(op.key is not None for op in ops) else "set"), frozenset()
    if fs & {"get", "put", "append"}:
        return "append-kv", ""
    if any(op.key is not None for op in ops):
        return "kv", None
    if fmt == "knossos-edn":
        return "cas-register", 0
    if fmt == "jepsen-edn":
        return "cas-register", None
    return "kv", None


def make_model(name: str, init: Any = _UNSET, *, nil_read_any: bool = False) -> Model:
    """The model called `name`, with initial state `init` (the model's default if unset)."""
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    if cls is MultiRegister:
        return cls(init)
    return cls(init, nil_read_any=nil_read_any)
