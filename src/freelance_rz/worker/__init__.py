"""The worker: ``worker`` (the :class:`Worker` object), ``loop`` (its poll loop), ``peers`` and
``link`` (the producers it knows, one DEALER socket each), ``pool`` (slots and job processes:
pools, recycling, cancelling), ``slots`` (a job process's handle, the running job),
``jobprocess`` (the child's main), ``runners`` (how the child runs jobs, per pool), ``pipe``
(the child's end of its pipe, ``report_progress``) and ``reaper`` (kills what tasks started
when the worker dies). A worker's protocol state per producer lives in
:mod:`freelance_rz.core.session`."""
