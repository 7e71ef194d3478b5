import dataclasses
from dataclasses import dataclass, field

import pytest
import yaml

from synthseg import SynthsegError
from synthseg.config import load_config, read_mapping
from synthseg.dataset import load_dataset_recipe
from synthseg.segmenter import load_segmenter_recipe
from synthseg.train.grounding import load_grounding_recipe


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
    for text in (".nan", "-.inf"):  # YAML's; every `x < 0` check would let NaN through
        with pytest.raises(SynthsegError, match=r"recipe.yaml: rate: expected a finite number, got (nan|-inf)"):
            load_config(Example, {"name": "x", "sizes": [], "rate": yaml.safe_load(text)}, "recipe.yaml")


@pytest.mark.parametrize("seed, fine", [(0, True), (2**63 - 1, True), (-1, False), (2**63, False)])
def test_every_recipes_seed_is_one_the_generators_take(tmp_path, seed, fine):
    (tmp_path / "r.yaml").write_text(f"extends: segmenter-world\nseed: {seed}\n")
    if fine:
        assert load_segmenter_recipe(tmp_path / "r.yaml").seed == seed
    else:
        with pytest.raises(SynthsegError, match=rf"r.yaml: seed must be an integer from 0 to 2\*\*63 - 1, got {seed}"):
            load_segmenter_recipe(tmp_path / "r.yaml")
    (tmp_path / "t.yaml").write_text(f"extends: world-grounding\ntriplets: {{seed: {seed}}}\n")  # a section's seed too
    if not fine:
        with pytest.raises(SynthsegError, match=r"t.yaml: triplets: seed must be"):
            load_grounding_recipe(tmp_path / "t.yaml")


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


def test_a_recipe_extends_another_and_states_only_what_it_changes(tmp_path):
    shipped = load_segmenter_recipe("segmenter-world")
    (tmp_path / "longer.yaml").write_text("extends: segmenter-world\nsteps: 8000\nbackbone_weights: null\n")
    longer = load_segmenter_recipe(tmp_path / "longer.yaml")
    assert longer == dataclasses.replace(shipped, steps=8000, backbone_weights=None)
    (tmp_path / "warm.yaml").write_text("extends: longer.yaml\nwarmup_steps: 300\n")  # a file beside it, itself extending
    assert load_segmenter_recipe(tmp_path / "warm.yaml", seed=4) == dataclasses.replace(longer, warmup_steps=300, seed=4)
    (tmp_path / "bad-arch.yaml").write_text("extends: warm.yaml\narch: unet\n")  # the merged recipe is what validates
    with pytest.raises(SynthsegError, match=r"bad-arch.yaml: unknown arch 'unet'"):
        load_segmenter_recipe(tmp_path / "bad-arch.yaml")


def test_a_bad_value_names_the_recipe_and_whether_options_were_given(tmp_path):
    """A value given as an option is checked with the recipe; its error says that options were given, since the
    bad value may be either's (an option left out, None, gives none)."""
    (tmp_path / "r.yaml").write_text("extends: segmenter-world\nbatch_size: 0\n")
    with pytest.raises(SynthsegError, match=r"r.yaml: batch_size must be"):
        load_segmenter_recipe(tmp_path / "r.yaml", seed=None)
    with pytest.raises(SynthsegError, match=r"segmenter-world.yaml with the options given: batch_size must be"):
        load_segmenter_recipe("segmenter-world", batch_size=0)
    (tmp_path / "d.yaml").write_text("classes: world\nper_class: -2\nlayouts: {max_objects: 3}\n")
    with pytest.raises(SynthsegError, match=r"d.yaml: per_class must be"):  # its layouts section is the recipe's, not an option
        load_dataset_recipe(recipe=tmp_path / "d.yaml", seed=None, layouts=False)
    with pytest.raises(SynthsegError, match=r"d.yaml with the options given: per_class must be"):
        load_dataset_recipe(recipe=tmp_path / "d.yaml", per_class=-1, layouts=True)


@pytest.mark.parametrize("files, error", [
    ({"a.yaml": "extends: b.yaml", "b.yaml": "extends: a.yaml"}, r"a.yaml: extends forms a cycle \(a -> b -> a\)"),
    ({"a.yaml": "extends: segmenter-wrold"}, r"a.yaml: extends: unknown segmenter recipe 'segmenter-wrold'; known: .*segmenter-world"),
    ({"a.yaml": "extends: [segmenter-world, segmenter-tiny]"}, r"a.yaml: extends names one recipe"),
])
def test_extends_errors_name_the_file(tmp_path, files, error):
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    with pytest.raises(SynthsegError, match=error):
        load_segmenter_recipe(tmp_path / "a.yaml")


def test_saved_configs_are_stamped_and_a_newer_format_is_refused(grounding, tmp_path):
    import json

    from synthseg import GroundingModule, __version__
    from synthseg.config import FORMAT_VERSION

    grounding.save_pretrained(tmp_path / "g")
    saved = json.loads((tmp_path / "g" / "config.json").read_text())
    assert (saved["_class_name"], saved["_synthseg_version"], saved["_format"]) == ("GroundingModule", __version__, FORMAT_VERSION)
    assert GroundingModule.from_pretrained(tmp_path / "g").config == grounding.config  # the stamp is not a field
    (tmp_path / "g" / "config.json").write_text(json.dumps({**saved, "_format": FORMAT_VERSION + 1, "_synthseg_version": "9.0.0"}))
    with pytest.raises(SynthsegError, match=r"config.json was written by a newer synthseg \(9.0.0, format 2; .*upgrade synthseg"):
        GroundingModule.from_pretrained(tmp_path / "g")
    legacy = {k: v for k, v in saved.items() if not k.startswith("_")}  # the files of earlier versions carry no stamp
    (tmp_path / "g" / "config.json").write_text(json.dumps(legacy))
    assert GroundingModule.from_pretrained(tmp_path / "g").config == grounding.config


def test_every_saved_recipe_and_model_config_names_its_writer(tmp_path):
    import json

    from synthseg.annotators import MaskRCNNAnnotator, MaskRCNNConfig, build_maskrcnn
    from synthseg.dataset import DatasetRecipe, claim
    from synthseg.train.loop import claim_workdir

    config = MaskRCNNConfig(categories=["a"], fpn_channels=16, image_size=32, anchor_sizes=[4, 8, 16, 32], mask_channels=16)
    MaskRCNNAnnotator(build_maskrcnn(config), config.categories, config=config).save_pretrained(tmp_path / "ann")
    recipe = DatasetRecipe(classes="dog", model="sd")
    claim(tmp_path / "ds", recipe)
    claim(tmp_path / "ds", recipe)  # the stamp does not make a rerun look like another recipe
    claim_workdir(tmp_path / "work", recipe)
    for path, writer in (("ann/config.json", "MaskRCNNAnnotator"), ("ds/recipe.json", "DatasetRecipe"), ("work/recipe.json", "DatasetRecipe")):
        assert json.loads((tmp_path / path).read_text())["_class_name"] == writer
    assert MaskRCNNAnnotator.from_pretrained(tmp_path / "ann").categories == ["a"]


def test_a_run_recorded_before_a_field_was_added_resumes_only_if_the_field_is_at_the_value_it_had(tmp_path):
    import json

    from synthseg.segmenter import load_segmenter_recipe
    from synthseg.train.backbone import load_backbone_recipe
    from synthseg.train.loop import claim_workdir
    from synthseg.train.world_dit import load_dit_recipe

    recipe = load_dit_recipe("world-dit")
    claim_workdir(tmp_path / "work", recipe)
    recorded = json.loads((tmp_path / "work" / "recipe.json").read_text())
    del recorded["init_from"]  # as a run recorded before `init_from` existed
    (tmp_path / "work" / "recipe.json").write_text(json.dumps(recorded))
    claim_workdir(tmp_path / "work", recipe)
    with pytest.raises(SynthsegError, match=r"another recipe \(init_from differ\)"):
        claim_workdir(tmp_path / "work", dataclasses.replace(recipe, init_from="world-dit"))
    backbone = load_backbone_recipe("backbone-world")  # a field added with a default other than None
    claim_workdir(tmp_path / "bb", backbone)
    recorded = json.loads((tmp_path / "bb" / "recipe.json").read_text())
    del recorded["eval_scenes"]  # as a run recorded before `eval_scenes` (default 500) existed
    (tmp_path / "bb" / "recipe.json").write_text(json.dumps(recorded))
    claim_workdir(tmp_path / "bb", backbone)
    with pytest.raises(SynthsegError, match=r"another recipe \(eval_scenes differ\)"):
        claim_workdir(tmp_path / "bb", dataclasses.replace(backbone, eval_scenes=100))
    segmenter = load_segmenter_recipe("segmenter-tiny")  # a list field (a default_factory)
    claim_workdir(tmp_path / "seg", segmenter)
    recorded = json.loads((tmp_path / "seg" / "recipe.json").read_text())
    del recorded["paste_scale_range"]
    (tmp_path / "seg" / "recipe.json").write_text(json.dumps(recorded))
    claim_workdir(tmp_path / "seg", segmenter)
    with pytest.raises(SynthsegError, match=r"another recipe \(paste_scale_range differ\)"):
        claim_workdir(tmp_path / "seg", dataclasses.replace(segmenter, paste_scale_range=[0.5, 1.0]))
    from synthseg.config import record_recipe
    from synthseg.dataset import load_dataset_recipe

    dataset = load_dataset_recipe("world")  # a field whose default is not what runs before it did: refine (20; unrefined before)
    record_recipe(tmp_path / "ds.json", dataset, "another recipe ({changed} differ)")
    recorded = json.loads((tmp_path / "ds.json").read_text())
    del recorded["refine"]
    (tmp_path / "ds.json").write_text(json.dumps(recorded))
    with pytest.raises(SynthsegError, match=r"another recipe \(refine differ\)"):
        record_recipe(tmp_path / "ds.json", dataset, "another recipe ({changed} differ)")
    record_recipe(tmp_path / "ds.json", dataclasses.replace(dataset, refine=0), "another recipe ({changed} differ)")
    dit = load_dataset_recipe("world", model="world-dit")  # a text prompt's candidates, added since: world-dit's card asks 4
    assert (dit.candidates, dit.captioner) == (4, "world-dit")
    record_recipe(tmp_path / "dit.json", dit, "another recipe ({changed} differ)")
    recorded = json.loads((tmp_path / "dit.json").read_text())
    del recorded["candidates"]
    recorded["captioner"] = None
    (tmp_path / "dit.json").write_text(json.dumps(recorded))  # as a world-dit dataset started before: one image per prompt
    with pytest.raises(SynthsegError, match=r"another recipe \(candidates, captioner differ\)"):
        record_recipe(tmp_path / "dit.json", dit, "another recipe ({changed} differ)")
    record_recipe(tmp_path / "dit.json", load_dataset_recipe("world", model="world-dit", candidates=1), "another recipe ({changed} differ)")
    assert (dit.count_guidance, dit.counter) == (8.0, "world-dit")  # text count guidance, added since: world-dit's card asks 8
    record_recipe(tmp_path / "guided.json", dit, "another recipe ({changed} differ)")
    recorded = json.loads((tmp_path / "guided.json").read_text())
    del recorded["count_guidance"]
    recorded["counter"] = None
    (tmp_path / "guided.json").write_text(json.dumps(recorded))  # as a world-dit dataset started before: best of 4, unguided
    with pytest.raises(SynthsegError, match=r"another recipe \(count_guidance, counter differ\)"):
        record_recipe(tmp_path / "guided.json", dit, "another recipe ({changed} differ)")
    record_recipe(tmp_path / "guided.json", load_dataset_recipe("world", model="world-dit", count_guidance=0, counter="none"),
                  "another recipe ({changed} differ)")
    layouts = load_dataset_recipe("world", layouts=True, candidates=1)  # inside a section: a field added since (candidates)
    record_recipe(tmp_path / "layouts.json", layouts, "another recipe ({changed} differ)")
    recorded = json.loads((tmp_path / "layouts.json").read_text())
    del recorded["layouts"]["candidates"], recorded["captioner"]
    (tmp_path / "layouts.json").write_text(json.dumps(recorded))
    record_recipe(tmp_path / "layouts.json", layouts, "another recipe ({changed} differ)")  # at its default: no change
    for changed in (dict(candidates=2), dict(box_attention=1.0)):  # a section's changed field is named with its section
        with pytest.raises(SynthsegError, match=rf"another recipe \(layouts\.{next(iter(changed))} differ\)"):
            record_recipe(tmp_path / "layouts.json", dataclasses.replace(layouts, layouts=dataclasses.replace(layouts.layouts, **changed)),
                          "another recipe ({changed} differ)")
