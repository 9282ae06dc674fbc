"""
imgrelay: live migration of CRIU images over sockets, with no image on disk.

C{imgrelay-proxy} runs beside C{criu dump --stream}, C{imgrelay-cache} beside
C{criu restore --stream}; between them runs imgrelay's link protocol, which
verifies every image and the whole session before the cache serves it.

The services are public API, to add to any Twisted application; each is
built from one config object, which checks its options when it is made::

    from imgrelay import CacheConfig, CacheService, ProxyConfig, ProxyService
    ProxyService(ProxyConfig(imagesDir="/run/dump", connect="tcp:host=dest:port=7070")).setServiceParent(app)
    CacheService(CacheConfig(imagesDir="/run/mig", listen="tcp:7070")).setServiceParent(app)
"""

from imgrelay.cache.service import CacheService
from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.core.errors import ProtocolError, SessionError
from imgrelay.core.limits import Limits
from imgrelay.core.store import Session, SessionState
from imgrelay.core.version import VERSION
from imgrelay.legacy import cacheService, proxyService
from imgrelay.observe.service import Observability
from imgrelay.proxy.service import ProxyService
from imgrelay.proxy.interfaces import SessionOutcome
from imgrelay.transport.tls import TLSFiles

__version__ = VERSION

__all__ = [
    "CacheConfig",
    "CacheService",
    "Limits",
    "Observability",
    "ProtocolError",
    "ProxyConfig",
    "ProxyService",
    "Session",
    "SessionError",
    "SessionOutcome",
    "SessionState",
    "TLSFiles",
    "cacheService",
    "proxyService",
]
