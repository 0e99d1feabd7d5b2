"""What runs under kopf, apart from kopf's own decorators (``handlers.py``).

* ``config.py``: :class:`Config`, the operator's options (command line or environment);
* ``cache.py``: what kopf's indexes keep of each object (one record builder) and the
  snapshots a reconcile gets of them;
* ``worker.py``: the one worker loop, used for jobs and pools alike;
* ``resync.py``: the periodic resync and the check of the cache against the API server;
* ``state.py``: :class:`Runtime`, everything the handlers share, kept in kopf's memo.

This ``__init__`` imports nothing, so ``python -m appliance_operator --help`` reads its
defaults from ``config.py`` without loading kopf or kubernetes.
"""
