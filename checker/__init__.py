"""checker: a standard-library-only linearizability checker that explains what it finds.

Read a history (`read_history`, any supported format), then `check` it against a model::

    from checker import check, read_history
    result = check(read_history("store/latest/history.jsonl"), "kv", time_limit_s=60)
    result.valid        # True, False or "unknown"
    result.anomalies    # why, for every key found invalid

A grow-only set history (model ``set-kv``) can also be analysed element by element, as
Jepsen's set-full checker does: `set_analysis` says which acknowledged elements were lost.

Verdicts merge as Jepsen's do: False beats "unknown" beats True (`merge_valid`).
"""

from checker.native import attach

# The search's compiled modules, when built and current (see checker.native).
__path__ = attach(__path__)

from checker.api import UNKNOWN, Result, Verdict, check, infer_model, merge_valid
from checker.explain import ANOMALY_NAMES, Anomaly
from checker.history import NEMESIS, Event, HistoryError, brief, show_key
from checker.models import ILLEGAL, MODELS, Model, make_model
from checker.ops import Op, pair
from checker.readers import (
    FORMATS,
    History,
    detect_format,
    load_json,
    parse_history,
    read_history,
)
from checker.search import Search, prepare
from checker.sets import LostElement, SetAnalysis, set_analysis

__all__ = [
    "ANOMALY_NAMES",
    "FORMATS",
    "ILLEGAL",
    "MODELS",
    "NEMESIS",
    "UNKNOWN",
    "Anomaly",
    "Event",
    "History",
    "HistoryError",
    "LostElement",
    "Model",
    "Op",
    "Result",
    "Search",
    "SetAnalysis",
    "Verdict",
    "brief",
    "check",
    "detect_format",
    "infer_model",
    "load_json",
    "make_model",
    "merge_valid",
    "pair",
    "parse_history",
    "prepare",
    "read_history",
    "set_analysis",
    "show_key",
]
