"""The Kubernetes backend: a job is an ExecuteJob and its env Secret, run by the operator."""
