"""
What a daemon reports besides its log: statistics, progress lines, the
status fd, HTTP C{/status} and C{/metrics}. It knows no daemon: each daemon
hands it what it watches.
"""
