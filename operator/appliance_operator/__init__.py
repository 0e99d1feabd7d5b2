"""appliance_operator: the kopf operator that turns ExecuteJobs into input-worker pods."""

__version__ = "0.1.0"
