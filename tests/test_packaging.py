"""A wheel from `pip wheel .` carries the recipes, splits and bundled models, and works from any folder."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_another_folder(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("synthseg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "synthseg/recipes/dataset-voc.yaml" in names and "synthseg/recipes/splits.yaml" in names
    assert {"synthseg/train/__init__.py", "synthseg/train/grounding.py", "synthseg/train/world_t2i.py"} <= set(names)
    assert {"synthseg/assets/world/t2i/unet/diffusion_pytorch_model.safetensors", "synthseg/assets/world/t2i/synthseg.json",
            "synthseg/assets/world/grounding/model.safetensors", "synthseg/assets/world/annotator/model.safetensors",
            "synthseg/assets/world-dit/t2i/transformer/diffusion_pytorch_model.safetensors", "synthseg/assets/world-dit/t2i/synthseg.json",
            "synthseg/assets/world-layout/unet/gligen.safetensors", "synthseg/assets/world-layout/synthseg.json",
            "synthseg/recipes/world-dit-finetune.yaml", "synthseg/recipes/world-layout.yaml"} <= set(names)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"), HF_HUB_OFFLINE="1")
    check = ("import synthseg, json; from synthseg.dataset import load_dataset_recipe; from synthseg.classes import get_split; "
             "import synthseg.train.grounding; r = load_dataset_recipe('voc'); s = get_split('voc-15-5'); "
             "print(json.dumps(dict(file=synthseg.__file__, per_class=r.per_class, model=r.model, unseen=s.unseen)))")
    found = json.loads(subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, check=True, capture_output=True, text=True).stdout)
    assert found["file"].startswith(str(tmp_path / "site"))  # the installed wheel, not this checkout
    assert found["per_class"] == 500 and found["model"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert found["unseen"] == ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
    made = subprocess.run([sys.executable, "-m", "synthseg", "make-dataset", "--per-class", "1", "--per-pair", "0", "--out", "ds"],
                          cwd=elsewhere, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    card = (elsewhere / "ds" / "README.md").read_text()
    assert len(list((elsewhere / "ds" / "records").glob("*.json"))) == 12 and "per_class\": 1" in card
