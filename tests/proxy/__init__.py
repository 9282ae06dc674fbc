"""Tests for L{imgrelay.proxy}."""
