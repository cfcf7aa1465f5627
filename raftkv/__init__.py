"""raftkv: a durable Raft key-value store, the first system under test.

It knows nothing of the harness. The protocol lives in a pure core
(`raftkv.core`), driven by two drivers: the asyncio node (`raftkv.node`) and a
seeded simulator (`raftkv.sim`).
"""
