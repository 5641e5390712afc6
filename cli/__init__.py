"""The process: the ``outbox`` command, ``serve``, ``demo`` and the embedded PostgreSQL.

This is the top layer. It imports the HTTP surface (``outbox.api``), the relay
(``outbox.relay``) and the library (``outbox``); nothing imports it.
"""
