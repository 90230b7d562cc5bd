"""Relays we compare chatcast with, each speaking chatcast's text mode well enough to count.

* :mod:`.threaded`: the lab's design: a thread per client, ``recv(1024)``, ``sendall`` to the
  others.
* :mod:`.naive`: the tutorial asyncio relay: ``readline()``, then ``write()`` and
  ``await drain()`` per recipient.
* :mod:`.ceiling`: a bare :class:`asyncio.Protocol` hub: split lines, stamp the sender, write
  the joined batch to every other transport; no limits, rooms or checks.

Every one sends a welcome line first and registers the client before it, so a client that has
read the welcome is known to be receiving (the load generator relies on it), and stamps each
line as ``guestN: text``, as chatcast's text mode does.
"""

WELCOME = b"Selamat datang di Server...\n"
