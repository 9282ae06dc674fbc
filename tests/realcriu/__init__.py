"""
The real-CRIU tier: real C{criu dump} and C{criu restore} of victim
processes, through the real daemons. Skipped, with the reason, where CRIU
cannot run (L{imgrelay.testing.realcriu.unavailable}).
"""
