"""Shared by the benchmark scripts: machine description and one section each in benchmarks/RESULTS.md."""

from __future__ import annotations

import datetime
import hashlib
import json
import multiprocessing
import os
import platform
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model, core count, GPU (if any) and library versions, on one line."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import diffusers

    return f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}"


def shipped_world(*bundles: str) -> list[tuple[Path, str, dict]]:
    """(folder, digest, training record) of each model (captioner, backbone and counter included) of bundled worlds ("world", "world-dit",
    "world-layout"; default "world"), each folder once. The digest (sha256 of the folder's safetensors, 8
    hex digits) tells which export a recorded figure was measured with."""
    from synthseg.registry import BUNDLES

    parts = [(b.pipeline, b.grounding, b.annotator, b.captioner, b.backbone, b.counter) for b in (BUNDLES[name] for name in bundles or ("world",))]
    folders = {f for folders in parts for f in folders if f is not None}
    return [(folder, *export_digest(folder)) for folder in sorted(folders, key=lambda f: (f.name, str(f)))]


def export_digest(folder: Path) -> tuple[str, dict]:
    """(digest, training record) of one exported model folder: sha256 of its safetensors (8 hex digits) and its
    training.json."""
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.rglob("*.safetensors"))))
    return digest.hexdigest()[:8], json.loads((folder / "training.json").read_text())


def write_section(name: str, body: str, bundle: str | tuple[str, ...] | None = None) -> None:
    """Replace (or append) the section `name` of RESULTS.md, stamped with command, machine and date, and
    with `bundle` (a name, or several) the shipped world models it ran on (see `shipped_world`)."""
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])
    stamp = f"Command: `{command}`  \nMachine: {machine()}  \nDate: {datetime.date.today().isoformat()}"
    if bundle:
        models = []
        for folder, digest, record in shipped_world(*((bundle,) if isinstance(bundle, str) else bundle)):
            steps = ", ".join(f"{stage} {r['steps']:,} steps" for stage, r in record.items())
            models.append(f"`{folder.parent.name}/{folder.name}/` {digest} ({steps})")
        stamp += f"  \nWorld models: {'; '.join(models)}"
    stamp += "\n\n"
    section = f"<!-- {name}:start -->\n## {name}\n\n{stamp}{body.strip()}\n<!-- {name}:end -->"
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is rewritten by the script named in it.\n"
    pattern = re.compile(rf"<!-- {re.escape(name)}:start -->.*?<!-- {re.escape(name)}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)


def section_rows(name: str) -> dict[str, str]:
    """The table rows of RESULTS.md's section `name` by first cell ({} if it has none): what a bench that reruns
    only some of its rows keeps of the others (each row then says in its own cells which run it came from)."""
    text = RESULTS.read_text() if RESULTS.exists() else ""
    found = re.search(rf"<!-- {re.escape(name)}:start -->(.*?)<!-- {re.escape(name)}:end -->", text, re.S)
    rows = [line for line in found.group(1).splitlines() if line.startswith("| ") and not line.startswith("|---")] if found else []
    return {row.split(" | ")[0][2:]: row for row in rows}


def run_stamp() -> str:
    """Date and CPU model of this run, short enough for a table cell: which run a kept row came from."""
    return f"{datetime.date.today().isoformat()}, {machine().split(',')[0]}"


def run_parallel(function, calls: dict, jobs: int) -> dict:
    """{key: function(*args, threads)} for each `calls[key]` = args, run in `jobs` spawned processes that share the CPU
    cores (`threads` torch threads each): the small world models train faster side by side than on more threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {key: pool.submit(function, *args, threads) for key, args in calls.items()}
        return {key: future.result() for key, future in futures.items()}
