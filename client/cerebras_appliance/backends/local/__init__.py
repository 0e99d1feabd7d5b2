"""The local backend: a job's input workers as subprocesses of this machine (:mod:`.job`),
their private state directories (:mod:`.state`) and warm processes (:mod:`.pool`)."""
