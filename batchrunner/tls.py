"""TLS contexts made while aiohttp is imported read their CA certificates when first used.

aiohttp makes its two default TLS contexts (verified and not) as ``aiohttp.connector`` is
imported, and each reads the system's CA bundle then: 144 certificates parsed twice, some 50 ms
of a 340 ms start-up here, paid by every run, ``http://`` ones too. Inside
``ca_loaded_when_first_used``, ``set_default_verify_paths`` (which ``ssl.create_default_context``
calls too) is put off on each context made, until the context first wraps a connection
(``wrap_bio``, as asyncio's and uvloop's TLS transports do, or ``wrap_socket``). A context that
were used some other way would fail closed: with no CA loaded, no certificate verifies.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ca_loaded_when_first_used"]

_WRAPS = ("wrap_bio", "wrap_socket")


@contextmanager
def ca_loaded_when_first_used() -> Iterator[None]:
    """Put off reading the CA certificates of each ``ssl.SSLContext`` made inside the block."""
    load: Callable[[ssl.SSLContext], None] = ssl.SSLContext.set_default_verify_paths
    own = vars(ssl.SSLContext).get("set_default_verify_paths")  # None: inherited, from C

    def put_off(context: ssl.SSLContext) -> None:
        def loaded_first(name: str) -> Callable[..., Any]:
            def wrap(*args: Any, **kwargs: Any) -> Any:
                for each in _WRAPS:  # the class's own methods from now on
                    vars(context).pop(each, None)
                load(context)
                return getattr(context, name)(*args, **kwargs)
            return wrap

        for name in _WRAPS:
            setattr(context, name, loaded_first(name))

    setattr(ssl.SSLContext, "set_default_verify_paths", put_off)  # noqa: B010
    try:
        yield
    finally:
        if own is None:
            delattr(ssl.SSLContext, "set_default_verify_paths")
        else:
            setattr(ssl.SSLContext, "set_default_verify_paths", own)  # noqa: B010
