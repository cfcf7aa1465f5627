"""harness: CLI, run lifecycle, workloads, clients, store and reports."""
