"""WorkerPools: :mod:`.plan` decides (pure), :mod:`.controller` keeps idle pods and claims
them for jobs, :mod:`.tls` and :mod:`.network` secure the claim channel."""
