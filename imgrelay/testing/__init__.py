"""
Helpers for testing imgrelay and what embeds it: a CRIU-like client for
both ends of the C{--stream} protocol, written from the wire spec, and the
real CRIU 4.2 traces and image files it can replay.
"""
