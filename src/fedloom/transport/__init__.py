"""The wire: protocol messages, the chunked tensor codec, validation, TLS and tokens.

* ``proto/fedloom.proto``: the service and messages; ``generated/``: grpcio-tools' code.
* :mod:`~fedloom.transport.codec`: packages as a header plus bounded chunks, and the
  :class:`~fedloom.transport.codec.Assembler` that checks every frame (named
  :class:`~fedloom.transport.codec.Rejection` reasons).
* :mod:`~fedloom.transport.messages`: fedloom's packages <-> protocol messages, in pairs.
* :mod:`~fedloom.transport.security`: TLS credentials and hashed per-client tokens.
"""
