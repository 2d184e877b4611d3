"""Validates rendered Helm output against the Kubernetes OpenAPI schemas bundled with
kubernetes-validate (no network), strictly (unknown fields are errors).

usage: validate_manifests.py --kubernetes-version 1.29.0 FILE...

Every object must have a schema for that version, except the Prometheus Operator's
ServiceMonitor (a CRD, not part of Kubernetes), which is checked for the fields the chart sets.
"""

import argparse
import sys

import kubernetes_validate
import yaml

CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def check_service_monitor(obj):
    spec = obj.get("spec") or {}
    problems = []
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is empty")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("spec.endpoints is empty")
    for e in endpoints:
        unknown = set(e) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings"}
        if unknown:
            problems.append(f"unexpected endpoint fields {sorted(unknown)}")
        if not e.get("port"):
            problems.append("endpoint without port")
    return problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("files", nargs="+")
    args = ap.parse_args()
    failures = 0
    checked = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"ERROR {path}: no objects rendered")
            failures += 1
        for obj in docs:
            kind, api = obj.get("kind"), obj.get("apiVersion")
            name = f"{path}: {kind}/{(obj.get('metadata') or {}).get('name')}"
            checked += 1
            if (api, kind) in CRDS:
                problems = check_service_monitor(obj)
                for p in problems:
                    print(f"ERROR {name}: {p}")
                failures += bool(problems)
                continue
            try:
                kubernetes_validate.validate(obj, args.kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path)
                print(f"ERROR {name} (Kubernetes {args.kubernetes_version}): {where}: {e.message}")
                failures += 1
            except kubernetes_validate.SchemaNotFoundError as e:
                print(f"ERROR {name}: {e.message}")
                failures += 1
    print(f"{checked} objects checked against Kubernetes {args.kubernetes_version} schemas, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
