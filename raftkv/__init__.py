"""raftkv: a durable Raft key-value store, the first system under test.

It knows nothing of the harness. The protocol lives in a pure core
(`raftkv.core`), driven by two drivers: the asyncio node (`raftkv.node`) and a
seeded simulator (`raftkv.sim`); all three take their timeouts from one
`raftkv.timing.RaftTiming`. `raftkv serve` (`raftkv.cli`) runs a node and its
HTTP face: the routes in `raftkv.http_routes`, the server in `raftkv.http_server`.
"""

from raftkv.native import attach

# The hot modules' compiled copies, when built and current (see raftkv.native).
__path__ = attach(__name__, __path__)
