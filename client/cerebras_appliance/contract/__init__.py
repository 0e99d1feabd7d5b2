"""What the client, the worker and the operator must agree on.

The ExecuteJob and WorkerPool API (:mod:`.api`), the names both sides write
(:mod:`.names`: labels, annotations, the worker's variables, mount paths), the job
lifecycle and status both backends compute (:mod:`.lifecycle`, :mod:`.status`), the env
snapshot file (:mod:`.envfile`), the warm claim and its channel (:mod:`.claim`,
:mod:`.channel`), the user's code as a deterministic archive (:mod:`.bundle`) and how a
refusal of the API server reads (:mod:`.apistatus`).

Nothing here imports ``kubernetes`` or anything above it: the import-linter contracts in
``.importlinter`` check it. Nothing is imported here either: the worker imports
:mod:`.envfile` and :mod:`.claim` on its fast path.
"""
