"""Builders that several test files share (rows, small configs, simulated inputs); shared fixtures live in
tests/conftest.py."""
