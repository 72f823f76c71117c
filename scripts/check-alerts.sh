#!/usr/bin/env bash
# Checks istio/alerts.yaml: extracts the PrometheusRule's spec.groups into a plain rules
# file, then runs `promtool check rules` on it and `promtool test rules` on
# tests/alerts/alerts-test.yaml (whose rule_files names the extracted file). Part of `make test`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v promtool >/dev/null || { echo "promtool missing: apt-get install prometheus" >&2; exit 1; }
py=python3
"$py" -c 'import yaml' 2>/dev/null || py="$root/tools/venv/bin/python"
"$py" -c 'import yaml' 2>/dev/null || { echo "PyYAML missing: apt-get install python3-yaml" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" - "$root/istio/alerts.yaml" "$tmp/alerts.rules.yaml" <<'PY'
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
assert doc.get("kind") == "PrometheusRule", "istio/alerts.yaml is not a PrometheusRule"
yaml.safe_dump({"groups": doc["spec"]["groups"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
cp "$root/tests/alerts/alerts-test.yaml" "$tmp/"
promtool check rules "$tmp/alerts.rules.yaml"
promtool test rules "$tmp/alerts-test.yaml"
