"""Model updates: command parsing, the update worker, loading and probation of new models."""
