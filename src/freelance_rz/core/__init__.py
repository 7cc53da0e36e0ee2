"""The pure core of freelance_rz: no sockets, threads, SQLite, sleeps or clock reads (the
time is passed in as ``now``, monotonic seconds).

``wire`` (frames, verbs, codec, validation), ``payload`` (job, result and job-process pipe
codecs), ``ledger`` (the producer's job table), ``offer`` (the producer's protocol engine),
``session`` (a worker's state for one producer) and ``text`` (peer strings made printable).
Nothing here imports the project's I/O modules.
"""
