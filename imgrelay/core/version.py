# -*- test-case-name: tests.test_embedding -*-
"""
imgrelay's release, as the daemons report it (C{/status}, C{/metrics}).
"""

#: The release.
VERSION = "0.1.0"
