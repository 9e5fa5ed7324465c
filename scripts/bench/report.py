#!/usr/bin/python3
"""Turn a results.json of scripts/bench/bench.py into the markdown table of
docs/benchmarks.md and a PNG chart drawn by gnuplot.

    scripts/bench/report.py RESULTS.json OUT.md OUT.png

OUT.md gets the table only (docs/benchmarks.md includes it between its
markers); the chart shows, per scenario, each server's median relative to
sente-lite's, on a log scale, for the figures where more is better.
"""
import json
import os
import subprocess
import sys
import tempfile

BETTER_HIGH = {"delivered/s", "round trips/s", "handshakes/s"}
BETTER_LOW = {"p50 ms", "p99 ms", "bytes/conn", "pss/conn", "pss bytes/conn", "bench cpu s",
              "wire bytes/msg", "worker cpu us/msg", "srv cpu us/conn"}


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) < 100:
        return f"{v:.2f}"
    return f"{v:,.0f}"


def main():
    src, out_md, out_png = sys.argv[1:4]
    doc = json.load(open(src))
    meds = doc["medians"]
    servers = []
    for m in meds:
        for s in m["values"]:
            if s not in servers:
                servers.append(s)
    peers = [s for s in servers if s != "sente-lite"]
    lines = ["| scenario | figure | " + " | ".join(servers) + " | " +
             " | ".join(f"ours / {p}" for p in peers) + " |",
             "|---|---|" + "---:|" * (len(servers) + len(peers))]
    for m in meds:
        v = m["values"]
        ours = v.get("sente-lite")
        ratios = []
        for p in peers:
            pv = v.get(p)
            ratios.append(f"{ours / pv:.2f}" if isinstance(ours, (int, float)) and pv else "–")
        lines.append(f"| {m['scenario']} | {m['figure']} | " +
                     " | ".join(fmt(v.get(s)) for s in servers) + " | " + " | ".join(ratios) +
                     " |")
    # Issue 16's goals (TLS against nchan over TLS, compression against
    # none), as bench.py computed them from the medians above.
    goals = doc.get("issue16") or []
    if goals:
        lines += ["", "| goal (issue 16) | ours | other | ratio | target |",
                  "|---|---:|---:|---:|---|"]
        for g in goals:
            r = "–" if g["ratio"] is None else f"{g['ratio']:.2f}"
            lines.append(f"| {g['goal']} | {fmt(g['ours'])} | {fmt(g['other'])} | {r} | "
                         f"{g['target']} |")
    with open(out_md, "w") as f:
        f.write("\n".join(lines) + "\n")

    # Chart: "how many times better is sente-lite" per scenario and peer
    # (the ceilings are measuring sticks, not peers: table only).
    peers = [p for p in peers if not p.startswith("ceiling")]
    rows = []
    for m in meds:
        k = m["figure"]
        if k not in BETTER_HIGH and k not in {"p99 ms", "bytes/conn", "pss bytes/conn"}:
            continue
        v = m["values"]
        ours = v.get("sente-lite")
        if not isinstance(ours, (int, float)) or ours <= 0:
            continue
        vals = []
        for p in peers:
            pv = v.get(p)
            if isinstance(pv, (int, float)) and pv > 0:
                vals.append(ours / pv if k in BETTER_HIGH else pv / ours)
            else:
                vals.append(None)
        if all(x is None for x in vals):
            continue  # sente-lite alone (the access-control rows): table only
        rows.append((f"{m['scenario']} {k}", vals))
    if not rows or not peers:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".dat", delete=False) as dat:
        for label, vals in rows:
            dat.write(f'"{label}" ' + " ".join("NaN" if x is None else f"{x:.4f}"
                                              for x in vals) + "\n")
    plot = [
        "set terminal pngcairo size 1100,520 font ',10'" if has_cairo() else
        "set terminal png size 1100,520",
        f"set output '{out_png}'",
        "set title 'sente-lite against its peers: times better (> 1 = sente-lite ahead)'",
        "set style data histogram", "set style histogram cluster gap 1",
        "set style fill solid 0.8 border -1", "set boxwidth 0.9",
        "set logscale y 2", "set yrange [0.125:*]", "set grid ytics",
        "set xtics rotate by -30 scale 0", "set key top right", "set rmargin 10",
        "set bmargin 9",
        "set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2",
        "plot " + ", ".join(f"'{dat.name}' using {i + 2}:xtic(1) title '{p}'"
                            for i, p in enumerate(peers)),
    ]
    subprocess.run(["gnuplot"], input="\n".join(plot), text=True, check=True)
    os.unlink(dat.name)


def has_cairo():
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (r.stdout + r.stderr)


if __name__ == "__main__":
    main()
