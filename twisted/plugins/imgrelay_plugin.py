"""
twistd plugins: C{twistd imgrelay-proxy} and C{twistd imgrelay-cache}.
Nothing of imgrelay is imported until one of them is run.
"""

from twisted.application.service import ServiceMaker

imgrelayProxy = ServiceMaker(
    "imgrelay proxy",
    "imgrelay.tap.proxy",
    "Relay the images of a CRIU dump to an imgrelay-cache",
    "imgrelay-proxy",
)

imgrelayCache = ServiceMaker(
    "imgrelay cache",
    "imgrelay.tap.cache",
    "Hold images from imgrelay-proxy in memory and serve them to CRIU restore",
    "imgrelay-cache",
)
