#!/usr/bin/env python3
"""Render a kustomize overlay of deploy/k8s without kubectl.

usage: render.py DIR [--out-dir OUT] [--compare-kubectl]

DIR is a directory holding a kustomization.yaml (an overlay or the base).
The rendered manifests go to stdout as one multi-document YAML stream, or,
with --out-dir, one file per object (NN-<kind>-<name>.yaml) for validators
that want a file per resource. --compare-kubectl also renders DIR with
`kubectl kustomize` and fails if the two renderings differ (as objects, not
as text), which proves this renderer exact for the files of this repository.

Why a renderer of our own: validate.sh must run on a fresh Debian machine,
where kubectl is not packaged with a recent kustomize. The overlays keep to a
small subset of kustomize, and this script implements exactly that subset and
refuses anything else (so a new feature in an overlay fails loudly here
instead of being rendered wrong):

  resources          files (multi-document YAML) and directories holding a
                     kustomization.yaml, rendered recursively
  namespace          set on every namespaced object
  images             name -> newName / newTag / digest, in every
                     containers / initContainers list
  replicas           name -> count, in spec.replicas
  patches            `path:` strategic-merge patches, targeted by the patch's
                     own apiVersion/kind/metadata.name (no `target:`, no
                     JSON 6902, no $patch directives)
  replacements       inline entries: `source` (kind, name, fieldPath) copied
                     into `targets` (select kind/name, fieldPaths); paths
                     of map keys and `[key=value]` list items; a scalar
                     keeps its target's type ("3" stays a string), as in
                     kustomize; applied after replicas and images
  configMapGenerator files / literals, options.labels and
                     options.disableNameSuffixHash; the content hash suffix
                     is computed as kustomize does and references to the
                     ConfigMap in pod specs are renamed

Order of operations follows kustomize: a base is rendered completely (its
own transformers included) before an overlay's patches and transformers
apply; name hashes are added last, at the top level, then references fixed.
"""
import argparse
import copy
import difflib
import hashlib
import json
import os
import shutil
import subprocess
import sys

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")

SUPPORTED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "replicas",
    "patches",
    "configMapGenerator",
    "replacements",
}

# Kinds that are not namespaced (no metadata.namespace is set on them).
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
    "IngressClass",
    "RuntimeClass",
}

# Kinds whose namespace handling in kustomize goes beyond metadata.namespace
# (subjects of bindings, webhook service references): not implemented.
UNSUPPORTED_KINDS = {
    "RoleBinding",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "APIService",
}

# kustomize's "legacy" output order (kind first, then name).
KIND_ORDER = [
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
]

# Strategic-merge keys of the Kubernetes lists the patches may touch. Lists
# not named here have no merge key and are replaced whole, as in Kubernetes.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "envFrom": None,
    "volumes": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "hostAliases": "ip",
}


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement,
    or is inconsistent (missing file, patch without a target...)."""


def load_yaml_documents(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def find_kustomization(directory):
    for name in KUSTOMIZATION_FILES:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise RenderError(f"{directory}: no kustomization.yaml")


def object_id(obj):
    meta = obj.get("metadata", {})
    return (obj.get("kind"), meta.get("namespace"), meta.get("name"))


def describe(obj):
    kind, ns, name = object_id(obj)
    return f"{kind}/{name}" + (f" (namespace {ns})" if ns else "")


# --------------------------------------------------------------------------
# strategic merge


def merge_key_for(field, items):
    if field == "ports":
        # Container ports merge on containerPort, Service ports on port.
        if any(isinstance(i, dict) and "containerPort" in i for i in items):
            return "containerPort"
        return "port"
    return MERGE_KEYS.get(field)


def strategic_merge(base, patch, path="", field=None):
    """Returns base with patch merged into it (neither is modified)."""
    if isinstance(patch, dict):
        for key in patch:
            if isinstance(key, str) and key.startswith("$"):
                raise RenderError(f"{path}: patch directive {key} is not supported")
        if not isinstance(base, dict):
            return strip_nulls(copy.deepcopy(patch))
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value, f"{path}.{key}", key)
            else:
                out[key] = strip_nulls(copy.deepcopy(value))
        return out
    if isinstance(patch, list):
        key = merge_key_for(field, (base if isinstance(base, list) else []) + patch)
        if key is None or not isinstance(base, list):
            return strip_nulls(copy.deepcopy(patch))
        out = copy.deepcopy(base)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                raise RenderError(f"{path}: list item without merge key `{key}`: {item!r}")
            for i, existing in enumerate(out):
                if isinstance(existing, dict) and existing.get(key) == item[key]:
                    out[i] = strategic_merge(existing, item, f"{path}[{key}={item[key]}]", None)
                    break
            else:
                out.append(strip_nulls(copy.deepcopy(item)))
        return out
    return patch


def strip_nulls(value):
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value]
    return value


# --------------------------------------------------------------------------
# generators


def go_json(value):
    """json.Marshal of Go: sorted keys, no spaces, UTF-8 kept, and <, >, &,
    U+2028, U+2029 escaped (Go's HTML-safe encoding)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def configmap_hash(cm):
    """kustomize's name suffix for a generated ConfigMap (api/hasher): the
    first 10 hex digits of the SHA-256 of a JSON encoding, with 0 1 3 a e
    spelled g h k m t. kustomize (v5) looks the name up with the path
    "metadata/name" as one field name, finds nothing and hashes "" instead,
    so the name is effectively not part of the hash; mirrored here."""
    encoded = {"kind": "ConfigMap", "name": "", "data": cm.get("data", {})}
    if cm.get("immutable"):
        encoded["immutable"] = True
    if cm.get("binaryData"):
        encoded["binaryData"] = cm["binaryData"]
    digest = hashlib.sha256(go_json(encoded).encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def generate_configmap(spec, directory):
    allowed = {"name", "files", "literals", "options"}
    unknown = set(spec) - allowed
    if unknown:
        raise RenderError(f"configMapGenerator {spec.get('name')}: unsupported fields {sorted(unknown)}")
    options = spec.get("options", {}) or {}
    unknown = set(options) - {"labels", "disableNameSuffixHash"}
    if unknown:
        raise RenderError(f"configMapGenerator {spec['name']}: unsupported options {sorted(unknown)}")
    data = {}
    for entry in spec.get("files", []) or []:
        key, _, rel = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
        with open(os.path.join(directory, rel), encoding="utf-8") as f:
            data[key] = f.read()
    for literal in spec.get("literals", []) or []:
        key, _, value = literal.partition("=")
        data[key] = value
    meta = {"name": spec["name"]}
    if options.get("labels"):
        meta["labels"] = dict(options["labels"])
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
    return cm, not options.get("disableNameSuffixHash", False)


# --------------------------------------------------------------------------
# transformers


def pod_specs(obj):
    """The pod specs inside a workload object."""
    spec = obj.get("spec") or {}
    kind = obj.get("kind")
    if kind == "Pod":
        yield spec
    elif kind == "CronJob":
        yield (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    elif isinstance(spec.get("template"), dict):
        yield spec["template"].get("spec") or {}


def walk_container_lists(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield value
            else:
                yield from walk_container_lists(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_container_lists(value)


def split_image(image):
    """'registry:5000/a/b:tag@sha256:..' -> (name, tag, digest)."""
    name, digest = (image.split("@", 1) + [None])[:2]
    tag = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest


def apply_images(objects, images):
    for entry in images:
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if unknown:
            raise RenderError(f"images entry {entry.get('name')}: unsupported fields {sorted(unknown)}")
        for obj in objects:
            for containers in walk_container_lists(obj):
                for c in containers:
                    name, tag, digest = split_image(str(c.get("image", "")))
                    if name != entry["name"]:
                        continue
                    name = entry.get("newName", name)
                    if "digest" in entry:
                        tag, digest = None, entry["digest"]
                    elif "newTag" in entry:
                        tag, digest = str(entry["newTag"]), None
                    c["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def apply_replicas(objects, replicas):
    for entry in replicas:
        hits = [o for o in objects if o["metadata"].get("name") == entry["name"]
                and o.get("kind") in ("Deployment", "StatefulSet", "ReplicaSet", "ReplicationController")]
        if not hits:
            raise RenderError(f"replicas: no workload named {entry['name']}")
        for obj in hits:
            obj.setdefault("spec", {})["replicas"] = entry["count"]


def apply_namespace(objects, namespace):
    for obj in objects:
        if obj.get("kind") not in CLUSTER_SCOPED:
            obj.setdefault("metadata", {})["namespace"] = namespace


def apply_patch(objects, patch, origin):
    matches = [
        i for i, o in enumerate(objects)
        if o.get("kind") == patch.get("kind")
        and o["metadata"].get("name") == patch.get("metadata", {}).get("name")
        and (patch.get("metadata", {}).get("namespace") in (None, o["metadata"].get("namespace")))
    ]
    if len(matches) != 1:
        raise RenderError(f"{origin}: patch for {describe(patch)} matches {len(matches)} objects")
    i = matches[0]
    objects[i] = strategic_merge(objects[i], patch, describe(patch))


def rename_configmap_references(objects, old, new, namespace):
    for obj in objects:
        if obj["metadata"].get("namespace") != namespace:
            continue
        for spec in pod_specs(obj):
            for volume in spec.get("volumes", []) or []:
                if (volume.get("configMap") or {}).get("name") == old:
                    volume["configMap"]["name"] = new
                for source in ((volume.get("projected") or {}).get("sources") or []):
                    if (source.get("configMap") or {}).get("name") == old:
                        source["configMap"]["name"] = new
            for containers in walk_container_lists(spec):
                for c in containers:
                    for env in c.get("env", []) or []:
                        ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
                        if ref and ref.get("name") == old:
                            ref["name"] = new
                    for env_from in c.get("envFrom", []) or []:
                        ref = env_from.get("configMapRef")
                        if ref and ref.get("name") == old:
                            ref["name"] = new


def field_path(path):
    """`a.b.[name=x].c` -> ["a", "b", ("name", "x"), "c"]."""
    out = []
    for part in path.split("."):
        if part.startswith("[") and part.endswith("]") and "=" in part:
            key, _, value = part[1:-1].partition("=")
            out.append((key, value))
        elif part and not part.startswith("["):
            out.append(part)
        else:
            raise RenderError(f"field path {path}: `{part}` is not supported")
    return out


def field_lookup(obj, path, what):
    """(parent, key) of the field at `path` in obj; the field must exist."""
    steps = field_path(path)
    node = obj
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, tuple):
            key, value = step
            items = node if isinstance(node, list) else []
            hits = [j for j, item in enumerate(items) if isinstance(item, dict) and str(item.get(key)) == value]
            if len(hits) != 1:
                raise RenderError(f"{what}: {path}: {len(hits)} items with {key}={value}")
            parent, k = node, hits[0]
        else:
            if not isinstance(node, dict) or step not in node:
                raise RenderError(f"{what}: {path}: no field `{step}`")
            parent, k = node, step
        if last:
            return parent, k
        node = parent[k]
    raise RenderError(f"{what}: empty field path")


def select(objects, selector, what):
    unknown = set(selector) - {"kind", "name"}
    if unknown:
        raise RenderError(f"{what}: unsupported selector fields {sorted(unknown)}")
    hits = [o for o in objects if o.get("kind") == selector.get("kind")
            and ("name" not in selector or o["metadata"].get("name") == selector["name"])]
    if not hits:
        raise RenderError(f"{what}: nothing matches {selector}")
    return hits


def apply_replacements(objects, replacements):
    for entry in replacements:
        if set(entry) != {"source", "targets"}:
            raise RenderError(f"replacements: only inline `source` + `targets` are supported, got {sorted(entry)}")
        source = entry["source"]
        unknown = set(source) - {"kind", "name", "fieldPath"}
        if unknown:
            raise RenderError(f"replacements source: unsupported fields {sorted(unknown)}")
        sources = select(objects, {k: source[k] for k in ("kind", "name") if k in source}, "replacements source")
        if len(sources) != 1:
            raise RenderError(f"replacements source {source}: matches {len(sources)} objects")
        parent, key = field_lookup(sources[0], source.get("fieldPath", "metadata.name"), "replacements source")
        value = parent[key]
        for target in entry["targets"]:
            unknown = set(target) - {"select", "fieldPaths"}
            if unknown:
                raise RenderError(f"replacements target: unsupported fields {sorted(unknown)}")
            for obj in select(objects, target["select"], "replacements target"):
                for path in target["fieldPaths"]:
                    parent, key = field_lookup(obj, path, f"replacements target {describe(obj)}")
                    old = parent[key]
                    # kustomize copies a scalar's text and keeps the target's type.
                    if isinstance(old, str) and not isinstance(value, (dict, list)):
                        parent[key] = str(value)
                    elif isinstance(old, int) and not isinstance(old, bool) and isinstance(value, str):
                        parent[key] = int(value)
                    else:
                        parent[key] = copy.deepcopy(value)


# --------------------------------------------------------------------------
# the build


def build(directory):
    """Renders a kustomization directory. Returns (objects, hashed), where
    hashed lists the generated objects still waiting for their name hash."""
    path = find_kustomization(directory)
    with open(path, encoding="utf-8") as f:
        kust = yaml.safe_load(f) or {}
    unknown = set(kust) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{path}: fields not supported by render.py: {sorted(unknown)} "
                          "(use kubectl kustomize, or extend render.py)")

    objects, hashed = [], []
    for entry in kust.get("resources", []) or []:
        target = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(target):
            sub_objects, sub_hashed = build(target)
            objects += sub_objects
            hashed += sub_hashed
        elif os.path.isfile(target):
            objects += load_yaml_documents(target)
        else:
            raise RenderError(f"{path}: resource {entry} does not exist")

    for spec in kust.get("configMapGenerator", []) or []:
        cm, wants_hash = generate_configmap(spec, directory)
        objects.append(cm)
        if wants_hash:
            hashed.append(cm)

    for obj in objects:
        if obj.get("kind") in UNSUPPORTED_KINDS:
            raise RenderError(f"{describe(obj)}: kind not supported by render.py")

    for entry in kust.get("patches", []) or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{path}: only `path:` patches are supported, got {sorted(entry)}")
        for patch in load_yaml_documents(os.path.join(directory, entry["path"])):
            apply_patch(objects, patch, entry["path"])
        # A patch replaces objects: re-point the pending hash list.
        hashed = [o for o in objects if any(o is h or object_id(o) == object_id(h) for h in hashed)]

    if kust.get("namespace"):
        apply_namespace(objects, kust["namespace"])
    apply_replicas(objects, kust.get("replicas", []) or [])
    apply_images(objects, kust.get("images", []) or [])
    apply_replacements(objects, kust.get("replacements", []) or [])
    return objects, hashed


def render(directory):
    objects, hashed = build(directory)
    for cm in hashed:
        old = cm["metadata"]["name"]
        new = f"{old}-{configmap_hash(cm)}"
        cm["metadata"]["name"] = new
        rename_configmap_references(objects, old, new, cm["metadata"].get("namespace"))
    seen = set()
    for obj in objects:
        if object_id(obj) in seen:
            raise RenderError(f"{describe(obj)} is defined twice")
        seen.add(object_id(obj))

    def order(obj):
        kind = obj.get("kind")
        rank = KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)
        return (rank, kind, obj["metadata"].get("namespace") or "", obj["metadata"].get("name"))

    return sorted(objects, key=order)


def kubectl_render(directory):
    kubectl = shutil.which("kubectl")
    if not kubectl:
        return None
    result = subprocess.run([kubectl, "kustomize", directory], capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


def compare(ours, theirs):
    """Differences between two renderings, as readable lines."""
    mine = {object_id(o): o for o in ours}
    other = {object_id(o): o for o in theirs}
    problems = []
    for key in sorted(set(mine) | set(other), key=str):
        if key not in other:
            problems.append(f"only in render.py: {key}")
        elif key not in mine:
            problems.append(f"only in kubectl kustomize: {key}")
        elif mine[key] != other[key]:
            a = yaml.safe_dump(mine[key], sort_keys=True).splitlines()
            b = yaml.safe_dump(other[key], sort_keys=True).splitlines()
            diff = "\n".join(difflib.unified_diff(b, a, "kubectl kustomize", "render.py", lineterm=""))
            problems.append(f"{key} differs:\n{diff}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory")
    parser.add_argument("--out-dir", help="write one file per object into this directory")
    parser.add_argument("--compare-kubectl", action="store_true",
                        help="fail if `kubectl kustomize` renders something different")
    args = parser.parse_args()
    try:
        objects = render(args.directory)
        if args.compare_kubectl:
            theirs = kubectl_render(args.directory)
            if theirs is None:
                print("render.py: kubectl not found; comparison skipped", file=sys.stderr)
            else:
                problems = compare(objects, theirs)
                if problems:
                    print("\n".join(problems), file=sys.stderr)
                    raise RenderError(f"{args.directory}: render.py and kubectl kustomize disagree")
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1

    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        for i, obj in enumerate(objects):
            name = f"{i:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            with open(os.path.join(args.out_dir, name), "w", encoding="utf-8") as f:
                yaml.safe_dump(obj, f, sort_keys=False)
    else:
        yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
