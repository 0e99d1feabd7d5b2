"""The input worker: what runs in a pod or a local subprocess.

``python -m cerebras_appliance.worker`` runs :mod:`.entrypoint` (main, applying the env,
running the user's code); :mod:`.init` is the PID-1 init and the stop signals, :mod:`.warm`
the warm mode of a pool's worker (idle, one claim), :mod:`.report` the exit codes, log lines
and marker files.

Nothing is imported here: the worker's start-up time is a headline figure, and this package
is imported before :mod:`.entrypoint` runs. See :mod:`cerebras_appliance.worker.entrypoint`.
"""
