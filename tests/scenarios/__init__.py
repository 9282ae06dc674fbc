"""Scenario tests: several parts of imgrelay together, over real sockets on 127.0.0.1."""
