"""Generate ``hypersweep/operators/podtemplatespec.schema.json`` from the Kubernetes OpenAPI.

The TrainJob and Sweep CRDs embed this schema for every replica's pod ``template``, as
Kubeflow's CRDs do, so that a misspelt pod field (``resource:``, ``envv:``) is refused at
``kubectl apply`` instead of being pruned silently or failing at pod creation.

The schema is never written by hand: it is derived from the API server's own OpenAPI v3
document (``/openapi/v3/api/v1``) and made *structural*, as CRDs require:

* every ``$ref`` (``allOf: [{$ref}]`` wrappers included) is inlined;
* IntOrString and Quantity become ``x-kubernetes-int-or-string: true``;
* ObjectMeta becomes labels and annotations only (what a pod template's metadata carries);
* ``x-kubernetes-list-type``/``-map-keys``/``-map-type`` are kept where a CRD accepts them;
  patch strategies, unions and ``oneOf`` are dropped;
* defaults are dropped (the API server defaults the pods themselves), except those of
  list-map keys, which a CRD requires (``ports[].protocol: TCP``);
* descriptions are dropped (``kubectl explain pod.spec`` has them): with them, the TrainJob
  CRD, which embeds the schema three times (``replicaSpecs`` and the Kubeflow aliases), would
  exceed the 256 KiB that client-side ``kubectl apply`` can record in its last-applied
  annotation; without, ``kubectl apply -k deploy/base`` works as it is.

Usage::

    python hack/podtemplate_schema.py                   # start a local API server, write the file
    python hack/podtemplate_schema.py --openapi doc.json --output -   # from a saved document
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OUTPUT = REPO / "hypersweep" / "operators" / "podtemplatespec.schema.json"
ROOT = "io.k8s.api.core.v1.PodTemplateSpec"
INT_OR_STRING = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
    "io.k8s.apimachinery.pkg.api.resource.Quantity",
}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
#: What a CRD's JSONSchemaProps accepts, of what the Kubernetes OpenAPI uses.
KEPT = (
    "type",
    "format",
    "enum",
    "required",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
)
SCALARS = ("string", "integer", "boolean")

Json = dict[str, Any]


class _Converter:
    def __init__(self, document: Json) -> None:
        self.schemas: dict[str, Json] = document["components"]["schemas"]

    def named(self, name: str, seen: tuple[str, ...] = ()) -> Json:
        if name in seen:
            raise ValueError(f"recursive schema {' -> '.join((*seen, name))}")
        if name in INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True}
        if name == OBJECT_META:
            return {
                "type": "object",
                "properties": {
                    "labels": copy.deepcopy(STRING_MAP),
                    "annotations": copy.deepcopy(STRING_MAP),
                },
            }
        return self.convert(self.schemas[name], (*seen, name))

    def convert(self, node: Json, seen: tuple[str, ...]) -> Json:
        ref = node.get("$ref") or next(
            (part["$ref"] for part in node.get("allOf", []) if "$ref" in part), None
        )
        if ref is not None:
            return self.named(ref.rsplit("/", 1)[-1], seen)
        out = {key: node[key] for key in KEPT if key in node}
        if node.get("type") in SCALARS and "default" in node:
            out["default"] = node["default"]  # kept until _drop_defaults: list-map keys need it
        if "properties" in node:
            out["properties"] = {
                name: self.convert(child, seen) for name, child in node["properties"].items()
            }
        if "items" in node:
            out["items"] = self.convert(node["items"], seen)
        if isinstance(node.get("additionalProperties"), dict):
            out["additionalProperties"] = self.convert(node["additionalProperties"], seen)
        self._fix_lists(out)
        if out.get("type") != "object":
            out.pop("x-kubernetes-map-type", None)
        return out

    @staticmethod
    def _fix_lists(out: Json) -> None:
        """Keep list types a CRD accepts: map keys must be required or defaulted scalars."""
        kind = out.get("x-kubernetes-list-type")
        items = out.get("items", {})
        if kind == "set" and items.get("type") in (None, "object", "array"):
            out.pop("x-kubernetes-list-type")
        if kind != "map":
            out.pop("x-kubernetes-list-map-keys", None)
            return
        keys = out.get("x-kubernetes-list-map-keys", [])
        fields = items.get("properties", {})
        required = set(items.get("required", []))
        valid = bool(keys) and items.get("type") == "object"
        for key in keys:
            field = fields.get(key)
            scalar = field is not None and field.get("type") in SCALARS
            if not scalar or (key not in required and "default" not in field):
                valid = False
        if not valid:
            out["x-kubernetes-list-type"] = "atomic"
            out.pop("x-kubernetes-list-map-keys", None)


def _drop_defaults(node: Json, keep: frozenset[str] = frozenset()) -> None:
    """Drop every default but those of list-map keys (``protocol: TCP``), which CRDs need."""
    for name, child in node.get("properties", {}).items():
        if name not in keep:
            child.pop("default", None)
        _drop_defaults(child)
    if "items" in node:
        required = node["items"].get("required", ())
        keys = frozenset(node.get("x-kubernetes-list-map-keys", ())) - set(required)
        node["items"].pop("default", None)
        _drop_defaults(node["items"], keys)
    if "additionalProperties" in node:
        node["additionalProperties"].pop("default", None)
        _drop_defaults(node["additionalProperties"])


def podtemplate_schema(document: Json) -> Json:
    """The structural schema of core/v1 PodTemplateSpec, from an ``/openapi/v3/api/v1`` document."""
    schema = _Converter(document).named(ROOT)
    _drop_defaults(schema)
    return schema


def _from_cluster() -> Json:
    from hypersweep.testing import LocalCluster

    with LocalCluster() as cluster:
        document: Json = json.loads(cluster.kubectl("get", "--raw", "/openapi/v3/api/v1").stdout)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openapi", help="a saved /openapi/v3/api/v1 document (default: fetch)")
    parser.add_argument("--output", default=str(OUTPUT), help="where to write ('-': stdout)")
    args = parser.parse_args(argv)
    document = json.loads(Path(args.openapi).read_text()) if args.openapi else _from_cluster()
    text = json.dumps(podtemplate_schema(document), indent=1, sort_keys=True) + "\n"
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
