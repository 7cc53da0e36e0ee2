"""The producer: ``api`` (the :class:`Producer` object applications use, and job options),
``future`` (the Futures it returns), ``thread`` (the I/O thread that owns the offer socket
and drives the pure offer engine of :mod:`freelance_rz.core.offer`) and ``store`` (the SQLite
journal of a durable producer)."""
