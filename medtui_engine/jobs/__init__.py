"""Jobs of every kind (training, merging, and the kinds to come): their status, how their events
are folded, one follower for all of them, and the rows that describe them to a user.

A job is a directory written by a detached process (:mod:`medtui_engine.runs.jobs`): ``job.json``
(pid and start time), ``events.jsonl`` (schema v1) and ``stdout.log``. What differs between kinds is
only the state their events fold into; that is registered in :mod:`.kinds`. Nothing here imports
heavy libraries or anything of a user interface.
"""
