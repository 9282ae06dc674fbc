"""
imgrelay: live migration of CRIU images over sockets, with no image on disk.

C{imgrelay-proxy} runs beside C{criu dump --stream}, C{imgrelay-cache} beside
C{criu restore --stream}; between them runs imgrelay's link protocol, which
verifies every image and the whole session before the cache serves it.

The services are public API, to add to any Twisted application::

    from imgrelay import cacheService, proxyService
    proxyService("/run/dump", "tcp:host=dest:port=7070").setServiceParent(app)
    cacheService("/run/mig", "tcp:7070").setServiceParent(app)
"""

from imgrelay.cache.service import CacheService, cacheService
from imgrelay.core.errors import ProtocolError, SessionError
from imgrelay.core.limits import Limits
from imgrelay.observe.service import Observability
from imgrelay.proxy.service import ProxyService, proxyService
from imgrelay.proxy.session import SessionOutcome
from imgrelay.core.store import Session, SessionState
from imgrelay.core.version import VERSION
from imgrelay.transport.tls import TLSFiles

__version__ = VERSION

__all__ = [
    "CacheService",
    "Limits",
    "Observability",
    "ProtocolError",
    "ProxyService",
    "Session",
    "SessionError",
    "SessionOutcome",
    "SessionState",
    "TLSFiles",
    "cacheService",
    "proxyService",
]
