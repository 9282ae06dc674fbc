"""
The C{imgrelay} command: C{send}, C{fetch} and C{status}.
"""
