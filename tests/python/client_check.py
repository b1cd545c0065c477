"""Drives skiff's API with the official Python `kubernetes` client: CRUD, list with label
selectors, and a watch that resumes from a resourceVersion. Exits non-zero on any failure."""
import sys
import threading

from kubernetes import client, config, watch

config.load_kube_config(config_file=sys.argv[1])
v1 = client.CoreV1Api()
ns = "pyclient"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
for i, tier in enumerate(["front", "back", "front"]):
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=f"cm{i}", labels={"tier": tier}), data={"i": str(i)}))

front = v1.list_namespaced_config_map(ns, label_selector="tier=front")
assert sorted(c.metadata.name for c in front.items) == ["cm0", "cm2"], front.items
# Every namespace also holds kube-root-ca.crt (ServiceAccount controller): select labelled ones.
notfront = v1.list_namespaced_config_map(ns, label_selector="tier,tier!=front")
assert [c.metadata.name for c in notfront.items] == ["cm1"]
page = v1.list_namespaced_config_map(ns, limit=2, label_selector="tier")
assert len(page.items) == 2 and page.metadata._continue, page.metadata
rest = v1.list_namespaced_config_map(ns, limit=2, label_selector="tier", _continue=page.metadata._continue)
assert [c.metadata.name for c in rest.items] == ["cm2"]

cm = v1.read_namespaced_config_map("cm1", ns)
cm.data["i"] = "changed"
v1.replace_namespaced_config_map("cm1", ns, cm)
v1.patch_namespaced_config_map("cm1", ns, {"metadata": {"labels": {"patched": "yes"}}})
cm = v1.read_namespaced_config_map("cm1", ns)
assert cm.data["i"] == "changed" and cm.metadata.labels["patched"] == "yes"

try:
    v1.read_namespaced_config_map("nope", ns)
    raise AssertionError("expected 404")
except client.exceptions.ApiException as e:
    assert e.status == 404, e

# A watch resumed from a list's resourceVersion sees exactly the later changes, in order.
rv = v1.list_namespaced_config_map(ns).metadata.resource_version
v1.delete_namespaced_config_map("cm0", ns)
v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm3")))
seen = []
w = watch.Watch()
for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=5):
    seen.append((ev["type"], ev["object"].metadata.name))
    if len(seen) == 2:
        w.stop()
assert seen == [("DELETED", "cm0"), ("ADDED", "cm3")], seen

v1.delete_namespace(ns)
print("python client: all checks passed")
