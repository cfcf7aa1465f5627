"""harness: CLI, run lifecycle, workloads, clients, store and reports."""

from raftkv.native import attach

# The simulated backend's compiled modules, when built and current (see raftkv.native).
__path__ = attach(__name__, __path__)
