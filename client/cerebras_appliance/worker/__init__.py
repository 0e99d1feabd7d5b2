"""The input worker: what runs in a pod or a local subprocess.

``python -m cerebras_appliance.worker`` runs :mod:`.entrypoint`.

Nothing is imported here: the worker's start-up time is a headline figure, and this package
is imported before :mod:`.entrypoint` runs. See :mod:`cerebras_appliance.worker.entrypoint`.
"""
