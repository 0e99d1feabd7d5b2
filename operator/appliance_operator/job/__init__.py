"""ExecuteJobs: :mod:`.plan` decides (pure), :mod:`.controller` executes."""
