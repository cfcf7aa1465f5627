"""checker: a stdlib-only linearizability checker (WGL search with explanations)."""
