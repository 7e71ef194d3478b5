"""Every bad input ends in one `error:` line, a non-zero exit, no traceback, and nothing half-written."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthseg.cli import app

runner = CliRunner()


def one_error(result, code: int = 1) -> str:
    """The single `error:` line of a failed command."""
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--per-class", "-1"], "per_class must be 0 or more, got -1"),
    (["--per-pair", "-3"], "per_pair must be 0 or more, got -3"),
    (["--per-class", "0", "--per-pair", "0"], "the plan has no images"),
    (["--num-shards", "0"], "--num-shards must be at least 1, got 0"),
    (["--num-shards", "-1"], "--num-shards must be at least 1, got -1"),
    (["--num-shards", "2", "--shard-index", "2"], "--shard-index 2 is outside 0..1"),
    (["--num-inference-steps", "0"], "num_inference_steps must be at least 1, got 0"),
    (["--spare", "-0.5"], "spare must be 0 or more, got -0.5"),
    (["--seed", "-1"], "with the options given: seed must be an integer from 0 to 2**63 - 1, got -1"),  # numpy refuses it
    (["--seed", str(2**64)], f"seed must be an integer from 0 to 2**63 - 1, got {2**64}"),
    (["--spare", "nan"], "--spare: expected a finite number, got nan"),
    (["--spare", "1e9"], "items (per_class, per_pair and spare), more than 10,000,000"),  # would fill the memory while planning
    (["--guidance-scale", "inf"], "--guidance-scale: expected a finite number, got inf"),
    (["--spare", "0.5", "--layouts-file", "layouts.jsonl"], "spare plans extra items, which a layouts_file does not have"),
    (["--classes", "dog,circle"], "model 'world' cannot draw 'dog': it knows only circle, square"),
    (["--classes", "world,notaclass"], "unknown class 'notaclass'"),
    (["--classes", "voc,dgo", "--model", "sd"], "unknown class 'dgo'; did you mean 'dog'"),
    (["--recipe", "vco"], "unknown dataset recipe 'vco'; known: coco, voc, world"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
    (["--device", "cuda:3"], "--device cuda:3: this machine has no CUDA GPU"),
    (["--model", "/nonexistent"], "no pipeline folder at /nonexistent"),
    (["--model", "world-dit", "--grounding", "world"], "grounding module expects feature channels"),  # the UNet world's module
    (["--model", "world-layout"], "WorldGLIGENPipeline draws box layouts, not text prompts alone"),  # without --layouts
])
def test_make_dataset_refuses_before_writing_anything(tmp_path, args, message):
    out = tmp_path / "out"
    assert message in one_error(runner.invoke(app, ["make-dataset", "--out", str(out), "--per-class", "1", *args]))
    assert not out.exists()


def test_a_bad_layouts_file_is_refused_before_the_folder_is_claimed(tmp_path):
    layouts, out = tmp_path / "layouts.jsonl", tmp_path / "out"
    layouts.write_text('{"phrases": ["circle"], "boxes": [[0, 0, 0.5, 0.5]]}\n{"phrases": ["circle"], "boxes": [[0, 0, 1.2, 0.5]]}\n')
    error = one_error(runner.invoke(app, ["make-dataset", "--classes", "circle,ring", "--layouts-file", str(layouts), "--out", str(out)]))
    assert error.endswith("line 2: box [0.0, 0.0, 1.2, 0.5] must be [x0, y0, x1, y1] with every value in [0, 1]")  # brackets kept, not markup
    assert not out.exists()
    layouts.write_text('{"phrases": ["circle"], "boxes": [[0, 0, 0.5, 0.5]], "seed": -3}\n')  # once taken, and refused by numpy mid-run
    error = one_error(runner.invoke(app, ["make-dataset", "--classes", "circle,ring", "--layouts-file", str(layouts), "--out", str(out)]))
    assert error.endswith("line 1: seed must be an integer from 0 to 2**63 - 1, got -3")
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a circle", "--classes", "circle"],
    ["make-triplets", "--count", "2"],
])
def test_a_gligen_model_without_layouts_is_refused_before_writing_anything(tmp_path, command):
    """A GLIGEN pipeline's call needs boxes: text prompts alone get one line, not diffusers' TypeError."""
    out = tmp_path / "out"
    assert "draws box layouts, not text prompts alone" in one_error(runner.invoke(app, [*command, "--model", "world-layout", "--out", str(out)]))
    assert not out.exists()


def test_a_corrupt_coco_file_is_one_line_without_pycocotools_chatter(tmp_path):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "annotations.json").write_text("{bad")
    error = one_error(runner.invoke(app, ["train-segmenter", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "seg")]))
    assert "annotations.json: not a COCO instances JSON" in error and not (tmp_path / "seg").exists()


@pytest.mark.parametrize("args, message", [
    (["segment", "--classes", "circle"], "error: Missing argument 'images'. (see synthseg segment --help)"),
    (["make-dataset", "--per-class", "many"], "error: Invalid value for '--per-class'"),
    (["make-dataset", "--bogus"], "error: No such option: --bogus"),
    (["bogus"], "error: No such command 'bogus'. (see synthseg --help)"),
])
def test_usage_errors_of_the_real_command_are_one_line(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "synthseg", *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


WORLD_TRAINERS = ("train-world-model", "train-world-dit", "train-world-layout", "train-world-annotator", "train-backbone")


@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a photograph of a star", "--classes", "star"],
    ["make-triplets"], ["train-grounding", "--online"], ["train-grounding"], ["evaluate-grounding"], ["benchmark", "--dataset", "world"], ["train-segmenter"],
    ["train-world-model"], ["train-world-dit"], ["train-world-layout"], ["train-world-annotator"], ["train-backbone"],
])
@pytest.mark.parametrize("device", ["cuda", "cuda:3", "gpu"])
def test_every_command_checks_its_device(tmp_path, command, device):
    args = command + (["--out", str(tmp_path / "out")] if command[0] in ("generate", "make-triplets") else [])
    args += ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "out")] if command[0] in WORLD_TRAINERS else []
    error = one_error(runner.invoke(app, [*args, "--device", device]))
    assert device in error and ("this machine has no CUDA GPU" in error or "unknown device 'gpu'" in error)
    assert not (tmp_path / "out").exists() and not (tmp_path / "work").exists()


def test_an_unusable_out_is_refused_before_any_work(tmp_path):
    file = tmp_path / "file"
    file.write_text("mine")
    assert "is a file, not a folder" in one_error(runner.invoke(app, ["make-dataset", "--out", str(file)]))
    assert file.read_text() == "mine"
    read_only = next((Path(line.split()[1]) for line in Path("/proc/mounts").read_text().splitlines()
                      if "ro" in line.split()[3].split(",") and Path(line.split()[1]).is_dir() and not os.access(line.split()[1], os.W_OK)), None)
    if read_only is not None:  # a read-only file system, where even root cannot write
        error = one_error(runner.invoke(app, ["make-dataset", "--out", str(read_only / "synthseg-out")]))
        assert "cannot be written (read-only file system" in error
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    if subprocess.run(["chattr", "+i", str(frozen)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    try:
        assert "cannot be written" in one_error(runner.invoke(app, ["make-dataset", "--out", str(frozen / "ds")]))
        assert "cannot be written" in one_error(runner.invoke(app, ["make-triplets", "--out", str(frozen)]))
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)


@pytest.mark.parametrize("command, kind, recipe, line", [
    ("train-world-model", "world-model", "world-t2i-finetune", "init_from: /nonexistent"),
    ("train-world-dit", "world-dit", "world-dit-finetune", "init_from: /nonexistent"),
    ("train-world-dit", "world-dit", "world-dit", "teacher: /nonexistent"),  # stage 1: its init_from is unset
    ("train-world-layout", "world-layout", "world-layout", "base: /nonexistent"),
])
def test_a_world_recipe_naming_a_missing_model_leaves_no_workdir(tmp_path, command, kind, recipe, line):
    """The models a recipe starts from load before the workdir is claimed, so the fixed recipe can use it."""
    from synthseg.registry import recipe_path

    key = line.split(":")[0]
    kept = [row for row in recipe_path(recipe, kind).read_text().splitlines() if not row.startswith(f"{key}:")]
    (tmp_path / "bad.yaml").write_text("\n".join(kept + [line]) + "\n")
    work = tmp_path / "work"
    error = one_error(runner.invoke(app, [command, "--recipe", str(tmp_path / "bad.yaml"), "--workdir", str(work), "--out", str(tmp_path / "o")]))
    assert "/nonexistent" in error and not work.exists()
    if key == "init_from":  # the usual miss: the stage before was not trained yet
        assert error.startswith("error: init_from: ") and "train the recipe that exports it first" in error


def test_an_unknown_recipe_lists_the_known_ones():
    assert "known: segmenter-maskformer-r101, segmenter-tiny" in one_error(runner.invoke(app, ["train-segmenter", "--recipe", "tiny"]))
    grounding = one_error(runner.invoke(app, ["make-triplets", "--recipe", "x"]))
    assert "known: coco-grounding, voc-grounding, " in grounding and "world-grounding" in grounding and "segmenter" not in grounding
    assert "nope.yaml: recipe file not found" in one_error(runner.invoke(app, ["train-grounding", "--recipe", "nope.yaml"]))


@pytest.mark.parametrize("args, message", [
    (["--recipe", "imagenet"], "unknown backbone recipe 'imagenet'; known: world"),
    (["--train-steps", "0"], "steps must be at least 1, got 0"),
])
def test_train_backbone_refuses_bad_input(tmp_path, args, message):
    work = tmp_path / "work"
    assert message in one_error(runner.invoke(app, ["train-backbone", "--workdir", str(work), "--out", str(tmp_path / "o"), *args]))
    assert not work.exists()


def test_dry_runs_print_the_plan_without_loading_a_model(monkeypatch):
    import synthseg.pipeline

    monkeypatch.setattr(synthseg.pipeline, "load_pipeline", lambda *a, **k: pytest.fail("a dry run loaded a model"))
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--per-class", "3", "--per-pair", "1"])
    assert result.exit_code == 0, result.output
    assert "102 images: 36 one-class and 66 two-class prompts" in result.output  # 12 world classes x 3, and each of their 66 pairs once
    assert "per class (12): circle 3, square 3" in result.output and "disk: about 2.1 MB" in result.output
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--per-class", "3", "--per-pair", "1", "--spare", "0.5"])
    assert "192 images: 60 one-class and 132 two-class prompts" in result.output  # 5 per class and 2 per pair stand for 3 and 1
    assert "spares: 192 planned for 102 asked (spare 0.5)" in result.output
    import synthseg.dataset

    counted = []
    monkeypatch.setattr(synthseg.dataset, "time_line", lambda *args: counted.append(args[5]) or "time: unknown")  # args[5]: the count
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--layouts", "--per-class", "1"])  # world-layout's card: 4 candidates
    assert result.exit_code == 0 and "12 images from layouts" in result.output, result.output
    assert "candidates: 4 images generated per layout (timed as such), the captioner world-layout and the counter world-layout keeping one" in result.output
    assert counted == [48]  # the time counts every candidate
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--layouts", "--per-class", "1", "--counter", "none", "--count-guidance", "0"])
    assert "the captioner world-layout keeping one" in result.output and counted == [48, 48]  # the captioner alone
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--layouts", "--per-class", "1", "--candidates", "1"])
    assert "candidates" not in result.output and counted == [48, 48, 12]
    result = runner.invoke(app, ["make-dataset", "--dry-run", "--layouts", "--per-class", "1", "--candidates", "1", "--count-guidance", "2"])
    assert "count guidance: 2 while the gated layers run, by the counter world-layout" in result.output, result.output
    result = runner.invoke(app, ["make-triplets", "--dry-run", "--count", "100"])
    assert result.exit_code == 0 and result.output.startswith("100 triplets:") and "disk: about 9.4 MB (94.2 KB per item; features storage)" in result.output
    result = runner.invoke(app, ["make-triplets", "--dry-run", "--count", str(10**10)])
    assert "triplets: the plan would hold 10,000,000,000 items (count), more than 10,000,000" in one_error(result)


def test_a_full_disk_says_so_and_a_rerun_resumes(pipe_dir, grounding, tmp_path, monkeypatch):
    import synthseg.dataset

    grounding.save_pretrained(tmp_path / "g")
    args = ["make-dataset", "--classes", "dog,cat", "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--per-class", "2",
            "--num-inference-steps", "2", "--guidance-scale", "2.0"]
    reference = runner.invoke(app, [*args, "--out", str(tmp_path / "reference")])
    assert reference.exit_code == 0, reference.output
    real, calls = synthseg.dataset.write_atomic, []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(synthseg.dataset, "write_atomic", fills_up)
    error = one_error(runner.invoke(app, [*args, "--out", str(tmp_path / "full")]))
    assert error.startswith("error: no space left on device writing ") and error.endswith("rerun the same command to resume")
    monkeypatch.setattr(synthseg.dataset, "write_atomic", real)
    assert runner.invoke(app, [*args, "--out", str(tmp_path / "full")]).exit_code == 0
    for name in ("annotations.json", "metadata.jsonl", "images/000003.png"):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes()


def test_ctrl_c_is_one_line(monkeypatch, tmp_path):
    import synthseg.dataset

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthseg.dataset, "build_dataset", interrupt)
    monkeypatch.setattr(os, "_exit", sys.exit)  # the command leaves at once; here the runner must see the exit
    error = one_error(runner.invoke(app, ["make-dataset", "--out", str(tmp_path / "ds")]), code=130)
    assert error == "error: interrupted; rerun the same command to resume"


@pytest.mark.slow
def test_ctrl_c_during_start_up_of_the_real_command(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "synthseg", "make-dataset", "--out", str(tmp_path / "ds")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    time.sleep(1.0)  # while torch and diffusers are being imported
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and stderr.strip().splitlines() == ["error: interrupted; rerun the same command to resume"], stderr


def test_generate_makes_class_names_safe_file_names(pipe_dir, grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "g")
    result = runner.invoke(app, ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--num-inference-steps", "2",
                                 "--prompt", "a photograph of a ../x", "--classes", "../x", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == ["out/images/00000.png", "out/masks/00000_x.png"]


def test_misleading_messages_are_gone(pipe_dir, grounding, tmp_path):
    assert "no pipeline folder at /nonexistent" in one_error(runner.invoke(app, ["generate", "--model", "/nonexistent", "--prompt", "a dog",
                                                                                "--classes", "dog", "--out", str(tmp_path / "o")]))
    (tmp_path / "half").mkdir()
    assert "is not a diffusers pipeline folder" in one_error(runner.invoke(app, ["generate", "--model", str(tmp_path / "half"),
                                                                                  "--prompt", "a dog", "--classes", "dog", "--out", str(tmp_path / "o")]))
    long = "a photograph of " + "a very " * 40 + "red dog"
    grounding.save_pretrained(tmp_path / "g")
    result = runner.invoke(app, ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--prompt", long,
                                 "--classes", "dog", "--out", str(tmp_path / "o")])
    warning, error = result.output.strip().splitlines()  # the cut is named, then the name it cut is refused
    assert warning.startswith("warning: prompt 'a photograph of a very") and "is 87 CLIP tokens and 77 are kept: 'a very" in warning
    assert result.exit_code == 1 and error.startswith("error: class 'dog' is cut off") and "tokenizer keeps 77" in error
    assert not (tmp_path / "o").exists()
    unnamed = runner.invoke(app, ["generate", "--model", str(pipe_dir), "--prompt", "a dog", "--classes", "dog", "--out", str(tmp_path / "o")])
    assert "is not a bundled model: name its grounding module (--grounding FOLDER)" in one_error(unnamed)


@pytest.mark.parametrize("args, message", [
    (["--num-inference-steps", "0"], "num_inference_steps must be at least 1, got 0"),  # not taken as "the model's default"
    (["--guidance-scale", "-1"], "guidance_scale must be a finite number, 0 or more, got -1.0"),
    (["--guidance-scale", "nan"], "--guidance-scale: expected a finite number, got nan"),  # click's float takes it
    (["--capture-timestep", "-5"], "the capture timestep must be in 0..1000"),
    (["--seed", "-1"], "seed must be an integer from 0 to 2**63 - 1, got -1"),
    (["--seed", str(2**63)], f"seed must be an integer from 0 to 2**63 - 1, got {2**63}"),  # torch's overflow, before
])
def test_generate_refuses_bad_sampling_values(pipe_dir, grounding, tmp_path, args, message):
    grounding.save_pretrained(tmp_path / "g")
    result = runner.invoke(app, ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "g"), "--prompt", "a photograph of a dog",
                                 "--classes", "dog", "--out", str(tmp_path / "o"), *args])
    assert message in one_error(result)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("template, message", [
    ("{}{}", "template must have one {} slot for the class list, got '{}{}'"),
    ("a {x} of {}", "template 'a {x} of {}' may hold only empty '{}' slots"),
    ("a {} {", "template 'a {} {' is not a format string"),
])
def test_a_template_str_format_cannot_fill_is_one_line(tmp_path, template, message):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 200, 200)).save(tmp_path / "scene.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "scene.png"), "--classes", "circle,star", "--template", template,
                                 "--out", str(tmp_path / "o")])
    assert message in one_error(result)
    assert not (tmp_path / "o").exists()


def test_template_slots_counts_empty_fields_only():
    from synthseg.prompts import template_slots

    assert template_slots("a photograph of a {} and a {}", "t") == 2
    assert template_slots("{{literal}} {}", "t") == 1
    assert template_slots("no slot", "t") == 0
    from synthseg.prompts import PromptPlanner

    # the planner counts slots the same way: a literal '{{}}' is no slot, so this template never takes a pair
    planner = PromptPlanner(["a {{}} photo of a {}", "a photograph of a {} and a {}"], 0)
    assert planner.fill(["circle"]) == "a {} photo of a circle" and planner.fill(["circle", "star"]) == "a photograph of a circle and a star"


def test_a_benchmark_of_no_images_is_refused(tmp_path):
    from synthseg.benchmark import benchmark
    from synthseg.errors import SynthsegError
    from synthseg.readers import SegmentationData
    from synthseg.world import WORLD_CLASSES

    result = runner.invoke(app, ["benchmark", "--dataset", "world", "--grounding", "world", "--count", "0", "--out", str(tmp_path / "b")])
    assert "--count must be at least 1, got 0" in one_error(result)
    assert not (tmp_path / "b").exists()
    empty = SegmentationData("empty", WORLD_CLASSES, [], lambda i: None)
    with pytest.raises(SynthsegError, match="empty: no images to score"):
        benchmark(None, empty)


@pytest.mark.parametrize("args, message", [
    (["--per-class", "0", "--pairs", "0"], "no test prompts: per_class and pairs are 0"),
    (["--per-class", "-1"], "per_class and pairs must be 0 or more, got -1 and"),
    (["--per-class", str(10**8)], "Protocol i: the plan would hold 1,200,000,050 items"),  # 12 world classes, 50 pairs
])
def test_protocol_i_with_no_or_too_many_prompts_is_refused(tmp_path, args, message):
    result = runner.invoke(app, ["evaluate-grounding", *args, "--out", str(tmp_path / "p.md")])
    assert message in one_error(result)
    assert not list(tmp_path.iterdir())
