#!/usr/bin/env python3
"""Print the "stages stored" list of a report folder's README: one line per stage of the
spec's order, with the time its stages/<stage>.json was written (or the time an earlier list
gave it), its wall seconds and a machine label. Standard library only.

    harness/report-stage-list.py DIR VARIANT[,VARIANT...] [--machine LABEL] [--readme]

VARIANTs in the report's order (e.g. lsdm,ft,dama,probe,tune,lsdm_lambda_0,lsdm_lambda_1).
--readme rewrites the list in DIR/README.md in place (the lines starting "- `stage`:");
stages already listed keep their time and machine.
"""
import datetime
import json
import os
import re
import sys


def main():
    args = sys.argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    folder, variants = args[0], args[1].split(",")
    machine = "this machine"
    if "--machine" in args:
        i = args.index("--machine") + 1
        if i >= len(args) or args[i].startswith("--"):
            sys.exit("--machine needs a label, e.g. --machine 'Xeon, mkl build'")
        machine = args[i]
    if not os.path.isdir(os.path.join(folder, "stages")):
        sys.exit(f"{folder}: no stages/ folder (not a report folder?)")
    order = ["measure_base", "trace", "eval_base"]
    for v in variants:
        order += [f"edit_{v}", f"measure_{v}", f"eval_{v}"]
    order.append("tradeoff")
    readme = os.path.join(folder, "README.md")
    old = open(readme).read() if os.path.exists(readme) else ""
    prev = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^- `(\w+)`: (stored .*)$", old, re.MULTILINE)
    }
    lines = []
    for s in order:
        path = os.path.join(folder, "stages", f"{s}.json")
        if s in prev:
            lines.append(f"- `{s}`: {prev[s]}")
        elif os.path.exists(path):
            wall = json.load(open(path))["wall_s"]
            when = datetime.datetime.fromtimestamp(
                os.path.getmtime(path), datetime.timezone.utc
            ).strftime("%Y-%m-%d %H:%M UTC")
            lines.append(f"- `{s}`: stored {when}, {wall:.0f} s, {machine}")
        else:
            lines.append(f"- `{s}`: not yet")
    text = "\n".join(lines) + "\n"
    if "--readme" not in args:
        sys.stdout.write(text)
        return
    kept = [l for l in old.splitlines(keepends=True) if not re.match(r"^- `\w+`: ", l)]
    open(readme, "w").write("".join(kept).rstrip("\n") + "\n\n" + text)


if __name__ == "__main__":
    main()
