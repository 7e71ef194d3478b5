import json
import re

from typer.testing import CliRunner

from synthseg.cli import app

runner = CliRunner()


def test_help_lists_only_working_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = re.findall(r"│ (\S+)\s{2,}", result.output.split("Commands")[1])
    assert commands == ["generate", "train-world-model", "train-world-annotator"]


def test_generate_end_to_end(pipe_dir, grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "grounding")
    args = ["generate", "--model", str(pipe_dir), "--grounding", str(tmp_path / "grounding"), "--steps", "3",
            "--prompt", "a photograph of a dog and a cat", "--classes", "dog,cat",
            "--prompt", "a photograph of a train", "--classes", "train", "--seed", "7", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "out/generation.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [7, 8]
    assert records[0]["classes"] == ["dog", "cat"]
    for record in records:
        assert (tmp_path / "out" / record["file_name"]).is_file()
        assert all((tmp_path / "out" / f).is_file() for f in record["masks"].values())


def test_generate_errors_are_one_line_with_exit_1(pipe_dir, grounding, tmp_path):
    grounding.save_pretrained(tmp_path / "grounding")
    base = ["generate", "--model", str(pipe_dir), "--steps", "2", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, base + ["--grounding", str(tmp_path / "nope"), "--prompt", "a dog", "--classes", "dog"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error: no grounding module at") and result.output.strip().count("\n") == 0
    result = runner.invoke(app, base + ["--grounding", str(tmp_path / "grounding"), "--prompt", "a dog", "--classes", "cat"])
    assert result.exit_code == 1 and "error: class 'cat' does not occur in prompt 'a dog'" in result.output
    assert not (tmp_path / "out").exists()
