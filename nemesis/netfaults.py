"""Lossy links as data: which links lose packets, the iptables rules that do it, and the
probe that refuses `delay` on a kernel without netem.

`packet-loss` drops a share of the packets on some links with iptables' `statistic` match
(`-m statistic --mode random --probability p -j DROP`), in our own chain
(`nemesis.iptables.CHAIN`), so healing is the partitions' heal: flush that chain. Like a
grudge, a loss map names for each receiver the senders whose packets it drops (here: each
packet with probability `share`, independently).

`delay` would need the kernel's netem queueing discipline (`tc qdisc ... netem`), which not
every kernel has; `delay_refusal` probes for it in a scratch network namespace and says
why the fault cannot run.
"""

from __future__ import annotations

import random
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nemesis import grudge as grudges

__all__ = [
    "DEFAULT_LOSS_SHARE",
    "NETEM_PROBE_ARGV",
    "LossShape",
    "check_share",
    "delay_refusal",
    "loss_label",
    "loss_map",
    "loss_rule",
    "loss_value",
    "pick_shape",
]

DEFAULT_LOSS_SHARE = 0.2
# A scratch network namespace (gone with the process): the probe touches no real link.
NETEM_PROBE_ARGV = ("unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                    "delay", "1ms")  # fmt: skip
NETEM_PROBE_TIMEOUT_S = 10.0

Direction = Literal["one-way", "both", "in", "out"]
_PAIR_DIRECTIONS: tuple[Direction, ...] = ("one-way", "both")
_ONE_DIRECTIONS: tuple[Direction, ...] = ("in", "out", "both")


@dataclass(frozen=True)
class LossShape:
    """Which links lose packets.

    `kind` "pair": the link between `nodes[0]` and `nodes[1]`; `direction` "one-way" (only
    what `nodes[0]` sends to `nodes[1]`) or "both". `kind` "one": every link of `nodes[0]`;
    `direction` "in" (what it receives), "out" (what it sends) or "both".
    """

    kind: Literal["pair", "one"]
    nodes: tuple[str, ...]
    direction: Direction


def check_share(share: float) -> float:
    """`share` if it is a probability a fault can use (0 < share <= 1), else ValueError."""
    if not 0 < share <= 1:
        raise ValueError(f"packet loss share must be above 0 and at most 1, got {share}")
    return share


def pick_shape(nodes: Sequence[str], rng: random.Random) -> LossShape:
    """A random pair of nodes or one random node, and a random direction (needs 2 nodes)."""
    ordered = sorted(nodes)
    if len(ordered) < 2:
        raise ValueError(f"packet loss needs at least 2 nodes, got {len(ordered)}")
    if rng.random() < 0.5:
        pair = tuple(rng.sample(ordered, 2))
        return LossShape("pair", pair, rng.choice(_PAIR_DIRECTIONS))
    return LossShape("one", (rng.choice(ordered),), rng.choice(_ONE_DIRECTIONS))


def loss_map(shape: LossShape, nodes: Sequence[str]) -> grudges.Grudge:
    """Receiver -> the senders whose packets it drops, complete over `nodes`."""
    drops: dict[str, set[str]] = {}

    def lose(sender: str, receiver: str) -> None:
        drops.setdefault(receiver, set()).add(sender)

    if shape.kind == "pair":
        first, second = shape.nodes
        lose(first, second)
        if shape.direction == "both":
            lose(second, first)
    else:
        (node,) = shape.nodes
        for other in nodes:
            if other == node:
                continue
            if shape.direction in ("in", "both"):
                lose(other, node)
            if shape.direction in ("out", "both"):
                lose(node, other)
    return grudges.complete(drops, nodes)


def loss_rule(sources: Sequence[str], share: float) -> list[str]:
    """The rule (argv after `-A <chain>`) dropping each packet from `sources` with
    probability `share`. iptables expands the comma-separated list into one rule per
    address, each drawing its own random number per packet."""
    if not sources:
        raise ValueError("a loss rule needs at least one source address")
    return ["-s", ",".join(sorted(set(sources))), "-m", "statistic", "--mode", "random",
            "--probability", f"{check_share(share):.6f}", "-j", "DROP"]  # fmt: skip


def loss_value(shape: LossShape, share: float, drops: Mapping[str, Any]) -> dict[str, Any]:
    """The history record of a packet-loss start (JSON-able): the shape, the share and the
    full loss map as sorted lists."""
    return {
        "kind": shape.kind,
        "nodes": list(shape.nodes),
        "direction": shape.direction,
        "share": share,
        "drops": {node: sorted(senders) for node, senders in sorted(drops.items())},
    }


def loss_label(value: Mapping[str, Any]) -> str:
    """A short text for a recorded packet-loss start, e.g. "20% lost n1->n2", "20% lost
    n1<->n2", "20% lost around n3 (in)"."""
    share = value.get("share")
    percent = f"{share * 100:g}%" if isinstance(share, int | float) else "?%"
    nodes = [str(n) for n in value.get("nodes") or ()]
    direction = value.get("direction")
    if value.get("kind") == "pair" and len(nodes) == 2:
        arrow = "->" if direction == "one-way" else "<->"
        return f"{percent} lost {nodes[0]}{arrow}{nodes[1]}"
    return f"{percent} lost around {', '.join(nodes)} ({direction})"


def delay_refusal() -> str:
    """Why `delay` cannot run here, as one sentence for the user.

    Probes the kernel for netem in a scratch network namespace (needs root, `unshare` and
    `tc`). The harness applies no delay yet even where the kernel has netem, so the answer
    is always a refusal; the probe says which kind.
    """
    missing = _netem_missing()
    if missing is None:
        return ("nemesis 'delay' is not available yet: this kernel has netem, but the harness "
                "does not apply delays; packet-loss works")  # fmt: skip
    return (f"nemesis 'delay' needs the kernel's netem queueing discipline (sch_netem), and "
            f"this machine cannot give it: {missing}; packet-loss works without it")  # fmt: skip


def _netem_missing() -> str | None:
    """None if a netem qdisc can be added in a scratch namespace, else what went wrong."""
    command = " ".join(NETEM_PROBE_ARGV)
    try:
        probe = subprocess.run(
            NETEM_PROBE_ARGV,
            capture_output=True,
            text=True,
            timeout=NETEM_PROBE_TIMEOUT_S,
            check=False,
        )
    except FileNotFoundError as exc:
        return f"`{command}` could not run ({exc.filename} is not installed)"
    except subprocess.TimeoutExpired:
        return f"`{command}` did not finish in {NETEM_PROBE_TIMEOUT_S:g} s"
    if probe.returncode == 0:
        return None
    said = (probe.stderr or probe.stdout).strip().splitlines()
    return f"`{command}` says: {said[-1].rstrip('.') if said else f'exit {probe.returncode}'}"
