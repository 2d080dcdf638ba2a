"""Validates custom resources against their CustomResourceDefinition's
openAPIV3Schema (for resources kubernetes-validate does not know, such as
KEDA's ScaledObject).

    python validate_crd.py CRD.yaml MANIFESTS.yaml...

Strict like `kubectl apply --validate=strict`: an object schema with
`properties` and neither `additionalProperties` nor
`x-kubernetes-preserve-unknown-fields` refuses unknown fields (the API server
would drop them silently). Documents of other kinds are skipped. Exits 1 on
the first invalid resource, naming it and the path of the error; 2 when no
document of the CRD's kind was found (a check that checked nothing).
"""

import sys

import jsonschema
import yaml


def strict(schema):
    if isinstance(schema, dict):
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def main() -> int:
    crd_path, *manifests = sys.argv[1:]
    with open(crd_path) as f:
        crd = yaml.safe_load(f)
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    schemas = {
        f"{group}/{v['name']}": strict(v["schema"]["openAPIV3Schema"])
        for v in crd["spec"]["versions"]
    }
    checked = 0
    for path in manifests:
        with open(path) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != kind:
                    continue
                name = f"{path}: {kind} {doc.get('metadata', {}).get('name')}"
                schema = schemas.get(doc.get("apiVersion"))
                if schema is None:
                    print(f"{name}: apiVersion {doc.get('apiVersion')} is not one of {sorted(schemas)}")
                    return 1
                # metadata is the API server's ObjectMeta, not in the CRD schema.
                body = {k: v for k, v in doc.items() if k != "metadata"}
                errors = sorted(
                    jsonschema.Draft7Validator(schema).iter_errors(body), key=lambda e: list(e.path)
                )
                if errors:
                    for e in errors:
                        print(f"{name}: {'.'.join(map(str, e.path)) or '<root>'}: {e.message}")
                    return 1
                print(f"{name}: valid against {crd_path}")
                checked += 1
    if checked == 0:
        print(f"no {kind} found in {manifests}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
