# -*- test-case-name: tests.test_embedding -*-
"""
The entry points of imgrelay 0.1 that took every option as an argument,
kept for one release: build a L{ProxyConfig} or L{CacheConfig} and hand it
to L{ProxyService} or L{CacheService} instead.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Union

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from imgrelay.cache.service import CacheService
from imgrelay.config import CacheConfig, ProxyConfig
from imgrelay.proxy.service import ProxyService


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"imgrelay.{old} is deprecated since imgrelay 0.2 and goes in 0.3: use {new}",
        DeprecationWarning,
        stacklevel=3,
    )


def proxyService(
    imagesDir: str,
    connect: Union[str, IStreamClientEndpoint],
    sessionName: Optional[str] = None,
    local: Optional[str] = None,
    reactor: Any = None,
    **options: Any,
) -> ProxyService:
    """
    Make an imgrelay proxy (deprecated: use L{ProxyService} with a
    L{ProxyConfig}).

    @param imagesDir: The directory CRIU dumps to.
    @param connect: The cache's link address.
    @param sessionName: The session's name; derived from C{imagesDir} by
        default.
    @param local: A server endpoint string for CRIU's socket.
    @param reactor: The reactor; the global one by default.
    @param options: Any other L{ProxyConfig} field, by name.
    @return: The service.
    """
    _deprecated("proxyService()", "ProxyService(ProxyConfig(...), reactor)")
    if sessionName is not None:
        options["sessionName"] = sessionName
    config = ProxyConfig(connect=connect, imagesDir=imagesDir, local=local, **options)
    return ProxyService(config, reactor)


def cacheService(
    imagesDir: Optional[str],
    listen: str,
    local: Optional[str] = None,
    reactor: Any = None,
    clock: Optional[IReactorTime] = None,
    **options: Any,
) -> CacheService:
    """
    Make an imgrelay cache (deprecated: use L{CacheService} with a
    L{CacheConfig}).

    @param imagesDir: The directory CRIU restores from, or None with a
        C{sessionsRoot} option.
    @param listen: A server endpoint string for links.
    @param local: A server endpoint string for CRIU's socket.
    @param reactor: The reactor; the global one by default.
    @param clock: Where the retention time is counted.
    @param options: Any other L{CacheConfig} field, by name.
    @return: The service.
    """
    _deprecated("cacheService()", "CacheService(CacheConfig(...), reactor)")
    config = CacheConfig(listen=listen, imagesDir=imagesDir, local=local, **options)
    return CacheService(config, reactor, clock)
