#!/usr/bin/env python3
"""Renders an Envoy template: replaces every {{KEY}} with the value of KEY=VALUE arguments
and fails on any placeholder left unset, so a typo never reaches Envoy."""
import re
import sys

template, out, *pairs = sys.argv[1:]
values = dict(p.split("=", 1) for p in pairs)
text = open(template).read()
lines = []
for line in text.splitlines(keepends=True):
    if line.lstrip().startswith("#"):
        lines.append(line)  # comments document the placeholders
        continue
    for key, value in values.items():
        line = line.replace("{{" + key + "}}", value)
    left = re.findall(r"\{\{([A-Z_]+)\}\}", line)
    if left:
        sys.exit(f"render: {template}: no value for {', '.join(left)}")
    lines.append(line)
open(out, "w").write("".join(lines))
