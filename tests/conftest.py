"""Shared pytest configuration: runner fixtures and quiet Beam logging."""

import logging

pytest_plugins = ["tests.runner_fixtures"]


def pytest_configure(config):
    config.addinivalue_line("markers", "flink: runs a pipeline on a local Flink cluster")
    config.addinivalue_line("markers", "prism: runs a pipeline on the Prism runner")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    # Beam stops its job servers from atexit hooks, after pytest has closed
    # the captured streams; their last log lines would print tracebacks.
    logging.raiseExceptions = False
