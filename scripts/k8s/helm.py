"""Helm without a helm binary: lint and render the chart with helm-python-sdk
(Helm 4 as a library; pinned in requirements.txt). Used by scripts/test and
tests/manifests.rs.

    python helm.py lint CHART_DIR
    python helm.py template CHART_DIR [--set key=value ...] [--name RELEASE]

`template` prints the rendered manifests as one YAML stream (templates in
path order, NOTES.txt left out), as `helm template` does.
"""

import argparse
import sys

import helm_python as helm


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    lint = sub.add_parser("lint")
    lint.add_argument("chart")
    template = sub.add_parser("template")
    template.add_argument("chart")
    template.add_argument("--set", action="append", default=[])
    template.add_argument("--name", default="kwasm")
    template.add_argument("--namespace", default="default")
    args = parser.parse_args()

    if args.command == "lint":
        report = helm.lint(args.chart, strict=True)
        for message in report.get("messages") or []:
            print(f"[{message.get('severity')}] {message.get('path')}: {message.get('error')}")
        errors = report.get("errors") or []
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        severe = [m for m in report.get("messages") or [] if (m.get("severity") or 0) >= 2]
        return 1 if errors or severe else 0

    values: dict = {}
    for assignment in args.set:
        merge(values, helm.parse_set_string(assignment))
    chart = helm.Chart.load(args.chart)
    rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
    for path in sorted(rendered):
        text = rendered[path].strip()
        if path.endswith("NOTES.txt") or not text:
            continue
        print(f"---\n# Source: {path}\n{text}")
    return 0


def merge(into: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


if __name__ == "__main__":
    sys.exit(main())
