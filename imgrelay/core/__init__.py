"""
The model, with no I/O: errors, image and session names, checksums, image
bytes, the session store, the interfaces between the parts, and the limits.
Everything else in imgrelay imports from here; nothing here imports from
the rest.
"""
