"""The local control plane is real: versions, CRDs + watch, controllers, GC, scheduling (kwok)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

if TYPE_CHECKING:
    from support.cluster import Cluster, WaitUntil


pytestmark = pytest.mark.integration


def _gone(read: Any, *args: Any) -> bool:
    try:
        read(*args)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_server_and_kubectl_report_pinned_version(cluster: Cluster) -> None:
    want = cluster.versions["KUBE_VERSION"]
    assert client.VersionApi(cluster.api_client).get_code().git_version == want
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == want
    assert out["serverVersion"]["gitVersion"] == want
    assert cluster.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crd_objects_can_be_created_listed_and_watched(
    cluster: Cluster, namespace: str, wait_until: WaitUntil
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api_client)
    custom = client.CustomObjectsApi(cluster.api_client)
    group, plural = "it.appliance.dev", f"widgets{uuid.uuid4().hex[:8]}"
    crd_name = f"{plural}.{group}"
    ext.create_custom_resource_definition(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": crd_name},
            "spec": {
                "group": group,
                "scope": "Namespaced",
                "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget" + plural[7:]},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {
                                "type": "object",
                                "properties": {
                                    "spec": {
                                        "type": "object",
                                        "properties": {"size": {"type": "integer", "minimum": 1}},
                                    }
                                },
                            }
                        },
                    }
                ],
            },
        }
    )
    try:

        def established() -> bool:
            conds = ext.read_custom_resource_definition(crd_name).status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conds)

        wait_until(established, timeout=30, what=f"CRD {crd_name} Established")
        kind = "Widget" + plural[7:]

        def obj(name: str, size: int) -> dict[str, Any]:
            return {
                "apiVersion": f"{group}/v1",
                "kind": kind,
                "metadata": {"name": name},
                "spec": {"size": size},
            }

        # The serving handler can lag Established by a moment: retry the first create.
        wait_until(
            lambda: custom.create_namespaced_custom_object(
                group, "v1", namespace, plural, obj("first", 1)
            ),
            timeout=30,
            what="first custom object created",
        )
        listed = custom.list_namespaced_custom_object(group, "v1", namespace, plural)
        assert [i["metadata"]["name"] for i in listed["items"]] == ["first"]

        # The schema is enforced at admission.
        with pytest.raises(ApiException) as bad:
            custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj("bad", 0))
        assert bad.value.status == 422

        # Watch from the list's resourceVersion: the object created next must arrive as ADDED.
        custom.create_namespaced_custom_object(group, "v1", namespace, plural, obj("second", 2))
        w = watch.Watch()
        seen = None
        for event in w.stream(
            custom.list_namespaced_custom_object,
            group,
            "v1",
            namespace,
            plural,
            resource_version=listed["metadata"]["resourceVersion"],
            timeout_seconds=30,
        ):
            if event["type"] == "ADDED" and event["object"]["metadata"]["name"] == "second":
                seen = event["object"]
                w.stop()
        assert seen is not None, "no ADDED event for the second object within 30s"
        assert seen["spec"] == {"size": 2}
    finally:
        ext.delete_custom_resource_definition(crd_name)


def test_deployment_gets_replicaset_and_gc_removes_it(
    cluster: Cluster, namespace: str, wait_until: WaitUntil
) -> None:
    apps = client.AppsV1Api(cluster.api_client)
    labels = {"app": "it-deploy"}
    dep = apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]},
                },
            },
        },
    )

    def owned_replicasets() -> list[Any]:
        rss = apps.list_namespaced_replica_set(namespace).items
        return [
            rs
            for rs in rss
            if any(o.uid == dep.metadata.uid for o in rs.metadata.owner_references or [])
        ]

    rs = wait_until(owned_replicasets, timeout=60, what="ReplicaSet owned by the Deployment")[0]
    core = client.CoreV1Api(cluster.api_client)
    # The ReplicaSet controller creates the pods (they stay Pending: no untainted node).
    wait_until(
        lambda: len(core.list_namespaced_pod(namespace, label_selector="app=it-deploy").items) == 2,
        timeout=60,
        what="2 pods created by the ReplicaSet",
    )

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_until(
        lambda: _gone(apps.read_namespaced_replica_set, rs.metadata.name, namespace),
        timeout=60,
        what="garbage collection of the ReplicaSet",
    )


def test_deleting_owner_garbage_collects_dependent(
    cluster: Cluster, namespace: str, wait_until: WaitUntil
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(
                name="dependent",
                owner_references=[
                    client.V1OwnerReference(
                        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
                    )
                ],
            )
        ),
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_until(
        lambda: _gone(core.read_namespaced_config_map, "dependent", namespace),
        timeout=60,
        what="garbage collection of the dependent ConfigMap",
    )


def _pod(name: str, spec_extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}], **spec_extra},
    }


def test_pod_runs_on_kwok_node(cluster: Cluster, namespace: str, wait_until: WaitUntil) -> None:
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_pod(namespace, _pod("fake-run", cluster.kwok_pod_spec))
    pod = wait_until(
        lambda: (
            (p := core.read_namespaced_pod("fake-run", namespace)).status.phase == "Running" and p
        ),
        timeout=60,
        what="pod Running on a kwok node",
    )
    assert pod.spec.node_name.startswith("kwok-node-")
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["type"] == "kwok"


def test_pod_without_toleration_is_kept_off_kwok_nodes(
    cluster: Cluster, namespace: str, wait_until: WaitUntil
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_pod(namespace, _pod("no-toleration", {"nodeSelector": {"type": "kwok"}}))

    def unschedulable() -> bool:
        conds = core.read_namespaced_pod("no-toleration", namespace).status.conditions or []
        return any(
            c.type == "PodScheduled" and c.status == "False" and c.reason == "Unschedulable"
            for c in conds
        )

    wait_until(unschedulable, timeout=60, what="the scheduler to report the pod Unschedulable")


def test_helm_installs_a_chart(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    (chart / "values.yaml").write_text("greeting: hello\n")
    cluster.helm("install", "rel", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    cm = client.CoreV1Api(cluster.api_client).read_namespaced_config_map("rel-cm", namespace)
    assert cm.data == {"greeting": "hi"}
    assert cluster.helm("version", "--short").stdout.startswith(cluster.versions["HELM_VERSION"])
