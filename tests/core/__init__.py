"""Tests for L{imgrelay.core}."""
