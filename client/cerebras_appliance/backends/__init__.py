"""Where a job's workers run: :mod:`.local` (subprocesses here) or :mod:`.kubernetes` (an
ExecuteJob for the operator). Each backend's job is a
:class:`cerebras_appliance.handle.JobHandle`."""
