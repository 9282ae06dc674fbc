"""Tests for L{imgrelay.cli}."""
