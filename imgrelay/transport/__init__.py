"""
Moving bytes: reading and writing CRIU's pipes, sending and receiving the
link's payloads, keepalive, TLS, and the local UNIX sockets and their names.
"""
