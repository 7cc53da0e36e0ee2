"""The worker: ``worker`` (the :class:`Worker` object and its poll loop), ``link`` (one
DEALER socket per producer), ``slots`` (job processes, time limits), ``jobprocess`` (the
child's main) and ``reaper`` (kills what tasks started when the worker dies). A worker's
protocol state per producer lives in :mod:`freelance_rz.core.session`."""
