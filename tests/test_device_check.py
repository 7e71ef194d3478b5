"""benchmarks/device_check.sh edits the git index so that a device call can carry the tree: it must put back
exactly what it took out."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/device_check.sh"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None, reason="needs a git checkout")
def test_device_check_takes_the_shipped_models_out_of_the_index_and_puts_them_back(tmp_path):
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(repo)], check=True)
    shutil.copy(ROOT / SCRIPT, repo / SCRIPT)  # the working tree's script, committed or not
    (repo / ".whl").mkdir()
    (repo / ".whl" / "placeholder.whl").write_bytes(b"0" * 1024)  # present: nothing is downloaded
    tracked, status = git(repo, "ls-files", "synthseg/assets"), git(repo, "status", "--porcelain")
    assert tracked

    prepared = subprocess.run(["bash", SCRIPT, "prepare"], cwd=repo, capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    mib = int(prepared.stdout.split("travels: ")[1].split(" MiB")[0])
    assert mib < 16  # the tree without the models, where the wheels need about 21 of the 64 MiB
    assert git(repo, "ls-files", "synthseg/assets") == ""
    assert git(repo, "ls-files", "--others", "--exclude-standard", "synthseg/assets") == ""  # ignored: not sent as untracked
    assert (repo / "synthseg/assets/world/t2i/model_index.json").exists()

    again = subprocess.run(["bash", SCRIPT, "prepare"], cwd=repo, capture_output=True, text=True)
    assert again.returncode == 1 and again.stderr.startswith("error: the index has staged changes")

    subprocess.run(["bash", SCRIPT, "restore"], cwd=repo, check=True, capture_output=True)
    assert git(repo, "ls-files", "synthseg/assets") == tracked
    assert git(repo, "status", "--porcelain") == status
    assert "/synthseg/assets/" not in (repo / ".git/info/exclude").read_text()
