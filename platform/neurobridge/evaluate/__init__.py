"""Honest metrics and the baselines that are always reported beside a model (NLB conventions)."""
