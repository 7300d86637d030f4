"""Cuts Autobahn's per-connection cost without changing what it does (DESIGN.md "Cost per connection").

- Autobahn formats its option list and several debug strings (``pformat``, ``hltype``, ``hlval``) on
  every handshake even when debug logging is off. Here those helpers return lazy values that format only
  if a debug line is really written, so debug output stays the same.
- Autobahn copies every protocol option from the factory onto each connection unless the protocol
  already has it; setting them once on a per-factory protocol class leaves the instances without them.
"""

from __future__ import annotations

from pprint import pformat as _pformat

import autobahn.twisted.websocket as _twisted_websocket
import autobahn.websocket.protocol as _websocket_protocol
from autobahn.util import hltype as _hltype, hlval as _hlval


class _Lazy:
    """A value formatted on first use: str(), repr() and format() all compute it then."""

    __slots__ = ("_function", "_args", "_kwargs")

    def __init__(self, function, args, kwargs):
        self._function = function
        self._args = args
        self._kwargs = kwargs

    def __str__(self) -> str:
        return str(self._function(*self._args, **self._kwargs))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(self._function(*self._args, **self._kwargs), spec)


def _lazy(function):
    def deferred_call(*args, **kwargs):
        return _Lazy(function, args, kwargs)
    deferred_call.__wrapped__ = function
    return deferred_call


def apply() -> None:
    """Make Autobahn's debug formatting lazy (idempotent)."""
    if getattr(_websocket_protocol.pformat, "__wrapped__", None) is _pformat:
        return
    _websocket_protocol.pformat = _lazy(_pformat)
    for module in (_websocket_protocol, _twisted_websocket):
        module.hltype = _lazy(_hltype)
        module.hlval = _lazy(_hlval)


def options_on_class(factory) -> None:
    """Give the factory a protocol subclass carrying its options, so connections need no copies."""
    base = factory.protocol
    options = {name: getattr(factory, name) for name in base.CONFIG_ATTRS}
    # A function stored on a class would become a method; keep option callbacks plain.
    options = {name: staticmethod(value) if callable(value) else value
               for name, value in options.items()}
    factory.protocol = type(base.__name__, (base,), options)
