"""Tests for L{imgrelay.observe}."""
