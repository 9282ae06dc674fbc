"""
CRIU's side of each daemon: the local protocols CRIU speaks on a UNIX
socket (C{--stream} capture and serve, C{--remote}), behind one admitting
factory.
"""
