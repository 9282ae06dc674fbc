"""
imgrelay's benchmark runner: C{python -m benchmarks}.

It starts the real daemons (C{twistd imgrelay-proxy} and C{imgrelay-cache},
C{--oneshot}, on 127.0.0.1), drives them with a CRIU-like writer and reader
over C{--stream}, runs the same bytes through a plain-socket Python copy
chain for a baseline, verifies every byte and prints a table. See
C{benchmarks/README.md}.
"""
