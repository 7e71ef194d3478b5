from dataclasses import dataclass, field

import pytest

from synthseg import SynthsegError
from synthseg.config import load_config, read_mapping


@dataclass
class Example:
    name: str
    sizes: list[int]
    rate: float = 0.5
    flag: bool = False
    extra: dict = field(default_factory=dict)


def test_load_config_coerces_and_checks_types():
    config = load_config(Example, {"name": "x", "sizes": [1, 2], "rate": 1})
    assert config == Example("x", [1, 2], 1.0)
    assert isinstance(config.rate, float)
    with pytest.raises(SynthsegError, match=r"recipe.yaml: sizes\[1\]: expected int, got 'a'"):
        load_config(Example, {"name": "x", "sizes": [1, "a"]}, "recipe.yaml")
    with pytest.raises(SynthsegError, match="flag: expected bool"):
        load_config(Example, {"name": "x", "sizes": [], "flag": "yes"})
    with pytest.raises(SynthsegError, match=r"unknown Example field\(s\) \['nmae'\]"):
        load_config(Example, {"nmae": "x", "sizes": []})
    with pytest.raises(SynthsegError, match=r"missing Example field\(s\) \['sizes'\]"):
        load_config(Example, {"name": "x"})


def test_read_mapping_errors(tmp_path):
    with pytest.raises(SynthsegError, match="file not found"):
        read_mapping(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2")
    with pytest.raises(SynthsegError, match="corrupt yaml file"):
        read_mapping(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SynthsegError, match="expected a mapping"):
        read_mapping(tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("name: x\nsizes: [3]\n")
    assert load_config(Example, read_mapping(tmp_path / "ok.yaml")).sizes == [3]
