"""
Encodings, with no I/O: the length-prefixed framing of protobuf headers and
raw payloads, imgrelay's link and fetch messages, and CRIU's local records.
Parsers take bytes and return events.
"""
