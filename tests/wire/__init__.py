"""Tests for L{imgrelay.wire}."""
