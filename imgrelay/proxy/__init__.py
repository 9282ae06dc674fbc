"""
imgrelay-proxy: the service beside C{criu dump}, its sessions, and the link
that streams them to the cache and resumes after a reset.
"""
