"""chatcast's sans-I/O core: what the library means, with no sockets, event loop or TLS.

Every module here takes bytes or values and gives back bytes, values or decisions; time comes in
as an argument and output leaves through a ``write`` callable a shell hands in. None of them
imports :mod:`asyncio`, :mod:`socket` or :mod:`ssl`, or any chatcast module above this package
but :mod:`chatcast.exceptions` (``tests/test_layers.py`` enforces it). ``docs/design.md`` draws
the layers.
"""
