"""End-to-end tests: the real twistd plugins as subprocesses."""
