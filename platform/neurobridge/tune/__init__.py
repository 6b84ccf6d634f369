"""Ablations and hyper-parameter search on Ray Tune: specs, trials, results tables and reports."""
