"""Wire protocol of dispy with no I/O in it: messages, framing, handshake, discovery.

Everything here takes bytes or events and returns bytes, events or decisions. Sockets,
clocks and processes live in :mod:`dispy_core.aio` and in the role packages.
"""
