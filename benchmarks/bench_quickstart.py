"""Wall time of the README quickstart's main job on this machine: `synthseg make-dataset --per-class 2
--per-pair 1` on the bundled miniature world (a fresh output folder, so nothing is resumed), then
`synthseg show`. Target: <= 2 minutes on 2 CPU cores after setup. Writes the "quickstart" section
of benchmarks/RESULTS.md.

    python benchmarks/bench_quickstart.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results import write_section

COMMANDS = [["make-dataset", "--per-class", "2", "--per-pair", "1", "--out", "{out}"], ["show", "{out}"]]


def main() -> None:
    from synthseg.dataset import plan, read_recipe

    synthseg = Path(sys.executable).with_name("synthseg")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quickstart"
        times = []
        for command in COMMANDS:
            start = time.perf_counter()
            subprocess.run([str(synthseg), *(a.format(out=out) for a in command)], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        kept = len((out / "metadata.jsonl").read_text().splitlines())
        planned = len(plan(read_recipe(out)))
    lines = [f"| `synthseg {' '.join(c).replace('{out}', 'out/quickstart')}` | {t:.1f} |" for c, t in zip(COMMANDS, times)]
    body = f"""The quickstart's two commands, each a fresh process (start-up and model loading included),
on the bundled world. {kept} of the {planned} planned images were kept (the rest failed the quality filter).

| command | seconds |
|---|---|
{chr(10).join(lines)}

Total: **{sum(times):.0f} s** (target <= 120 s after setup).
"""
    print(body)
    write_section("quickstart", body, bundle="world")


if __name__ == "__main__":
    main()
