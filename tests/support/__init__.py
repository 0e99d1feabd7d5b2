"""What the test suites share, as ordinary modules (importable as ``support``:
``tests`` is on pytest's ``pythonpath``), so that neither conftest loads the other and a test
names the types of its fixtures with a plain import.

- ``support.cluster``: the local control plane (hack/cluster, kwok nodes): the ``Cluster``
  handle, ``CommandError``, ``wait_until``/``WaitUntil`` and the helpers its fixture runs.
- ``support.kind``: the kind cluster of the e2e tests: ``KindCluster`` (``NodeCluster``), the
  Docker helpers, the e2e loader (``Loader``) and the ``Jobs`` helper.
- ``support.fixtures``: the fixtures and the report hook both conftests offer (``wait_until``,
  ``namespace``, the operator's log in a failed test's report).
- ``support.fake_kube``: ``FakeKubeApi``, the operator's ``KubeApi`` in memory, answering as
  the API server does for what the unit tests rely on (its docstring says what it leaves out).
- ``support.objects``: ``job_body``, an ExecuteJob as the API server returns it.
"""
