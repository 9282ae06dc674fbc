"""Tests for L{imgrelay.local}."""
