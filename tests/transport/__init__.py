"""Tests for L{imgrelay.transport}."""
