"""Validates the objects of a rendered chart whose kinds are defined by CustomResourceDefinitions
(GatewayClass, ...) against the openAPIV3Schema of those CRDs. kubernetes-validate covers the
built-in kinds; this covers the rest it has no schema for.

Usage: validate_crd_objects.py RENDERED.yaml CRD_DIR...   Prints one line per object; exits 1
on the first invalid object, 2 when a CRD kind has no schema here.
"""
import glob
import os
import sys

import jsonschema
import yaml


def schemas(dirs):
    out = {}
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.yaml"))):
            for crd in yaml.safe_load_all(open(path)):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for v in spec["versions"]:
                    key = (f"{spec['group']}/{v['name']}", spec["names"]["kind"])
                    out[key] = v["schema"]["openAPIV3Schema"]
    return out


def main():
    rendered, dirs = sys.argv[1], sys.argv[2:]
    known = schemas(dirs)
    builtin_groups = ("", "apps", "rbac.authorization.k8s.io", "policy", "autoscaling",
                      "apiextensions.k8s.io")
    status = 0
    for obj in yaml.safe_load_all(open(rendered)):
        if not obj:
            continue
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
        if group in builtin_groups:
            continue
        schema = known.get((api_version, kind))
        name = obj.get("metadata", {}).get("name", "?")
        if schema is None:
            print(f"NO SCHEMA {api_version} {kind} {name}")
            status = max(status, 2)
            continue
        try:
            jsonschema.validate(obj, schema)
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            print(f"INVALID {kind} {name}: {path}: {e.message}")
            sys.exit(1)
        print(f"valid {kind} {name} against the {api_version} CRD schema")
    sys.exit(status)


main()
