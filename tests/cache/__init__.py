"""Tests for L{imgrelay.cache}."""
