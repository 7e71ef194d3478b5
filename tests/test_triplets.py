
import json

import numpy as np
import pytest
import torch

from synthseg import SynthsegError, grounding_loss, unet_feature_layout
from synthseg.annotators import Instance
from synthseg.config import load_config
from synthseg.triplets import TripletRecipe, TripletShards, make_triplets, target_masks, triplet_prompt

SEEN = ["dog", "cat", "train", "horse"]


class FakeAnnotator:
    """Finds the first prompted class as the left half of the image, never the second."""

    def category_of(self, name):
        return 1

    def annotate(self, images, class_names):
        out = []
        for image, names in zip(images, class_names):
            mask = np.zeros(image.shape[:2], dtype=bool)
            mask[:, : image.shape[1] // 2] = True
            out.append([Instance(mask, names[0], 0.9)])
        return out


def recipe(**overrides):
    base = dict(seen=SEEN, count=10, shard_size=4, batch_size=2, num_inference_steps=2, guidance_scale=2.0, seed=3)
    return load_config(TripletRecipe, {**base, **overrides}, "recipe")


def test_prompts_use_seen_classes_and_are_deterministic():
    r = recipe(count=200)
    prompts = [triplet_prompt(r, i) for i in range(200)]
    assert prompts == [triplet_prompt(r, i) for i in range(200)]
    assert {c for p in prompts for c in p.classes} == set(SEEN) and [p.index for p in prompts] == list(range(200))
    pairs = sum(len(p.classes) == 2 for p in prompts)
    assert 70 < pairs < 130
    two = next(p for p in prompts if len(p.classes) == 2)
    assert two.prompt == f"a photograph of a {two.classes[0]} and a {two.classes[1]}"


def test_target_masks_union_top_and_missing():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[0], b[1] = True, True
    found = [Instance(a, "dog", 0.6), Instance(b, "dog", 0.9)]
    union, missing, scores = target_masks(found, ["dog", "cat"], (4, 4), "union")
    top, _, _ = target_masks(found, ["dog", "cat"], (4, 4), "top")
    assert union[0].sum() == 8 and top[0].sum() == 4 and top[0][1].all()
    assert missing == [False, True] and scores == [0.9, 0.0] and union[1].sum() == 0


def test_shards_write_resume_and_stream(pipe, tmp_path):
    r = recipe()
    make_triplets(pipe, FakeAnnotator(), r, tmp_path / "a")
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["layout.json", "recipe.json"] + [f"shard-0000{i}.{ext}" for i in range(3) for ext in ("jsonl", "safetensors")]
    data = TripletShards(tmp_path / "a")
    assert len(data) == 10 and data.bytes_per_triplet() > 0
    records = data.records()
    assert [rec["index"] for rec in records] == list(range(10))
    for rec in records:
        assert rec["missing"][0] is False and all(rec["missing"][1:])

    # Kill after the first shard: delete the others, rerun, same bytes.
    first = (tmp_path / "a" / "shard-00001.safetensors").read_bytes()
    for p in (tmp_path / "a").glob("shard-0000[12].*"):
        p.unlink()
    (tmp_path / "a" / "shard-00001.safetensors").write_bytes(b"partial")  # a torn write without its jsonl
    stamp = (tmp_path / "a" / "shard-00000.safetensors").stat().st_mtime_ns
    make_triplets(pipe, FakeAnnotator(), r, tmp_path / "a")
    assert (tmp_path / "a" / "shard-00000.safetensors").stat().st_mtime_ns == stamp  # not redone
    assert (tmp_path / "a" / "shard-00001.safetensors").read_bytes() == first
    with pytest.raises(SynthsegError, match="triplets of another recipe"):
        make_triplets(pipe, FakeAnnotator(), recipe(seed=4), tmp_path / "a")
    assert data.recipe == r

    items = list(data)
    assert len(items) == 10 and sorted(len(list(data)) for _ in range(2)) == [10, 10]
    item = items[0]
    assert item["masks"].shape == (2, 32, 32) and item["queries"].shape == (2, 32)
    channels, strides = unet_feature_layout(pipe.unet)
    assert [tuple(f.shape) for f in item["features"]] == [(c, 16 // s, 16 // s) for c, s in zip(channels, strides)]


def test_streamed_batches_train_a_grounding_module(pipe, grounding, tmp_path):
    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4), tmp_path)
    batch = torch.utils.data.default_collate(list(TripletShards(tmp_path)))
    logits = grounding(batch["features"], batch["queries"], batch["valid"])
    loss = grounding_loss(logits, batch["masks"], batch["valid"], batch["missing"])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0


def test_bad_recipes():
    with pytest.raises(SynthsegError, match="target must be 'union' or 'top'"):
        recipe(target="all")
    with pytest.raises(SynthsegError, match="multiple of batch_size"):
        recipe(shard_size=5)
    with pytest.raises(SynthsegError, match="no triplet shards"):
        TripletShards("/nonexistent")


@pytest.mark.slow
def test_train_grounding_lowers_the_loss_and_resumes(pipe, tmp_path):
    from synthseg.train.grounding import GroundingModelRecipe, GroundingRecipe, TrainRecipe, train_grounding

    make_triplets(pipe, FakeAnnotator(), recipe(count=8, shard_size=4), tmp_path / "t")
    model = dict(fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2)
    r = GroundingRecipe(split="voc-15-5", model=GroundingModelRecipe(**model),
                        train=TrainRecipe(steps=30, batch_size=4, lr=3e-3, warmup_steps=2, checkpoint_every=10))
    straight = train_grounding(r, TripletShards(tmp_path / "t"), tmp_path / "w1", tmp_path / "g1")
    losses = torch.load(tmp_path / "w1" / "grounding.ckpt", weights_only=True)["losses"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    train_grounding(r, TripletShards(tmp_path / "t"), tmp_path / "w2", tmp_path / "g2", max_steps=10)
    resumed = train_grounding(r, TripletShards(tmp_path / "t"), tmp_path / "w2", tmp_path / "g2")
    assert resumed.config == straight.config and (tmp_path / "g2" / "recipe.json").is_file()
    assert torch.load(tmp_path / "w2" / "grounding.ckpt", weights_only=True)["step"] == 30
    record = json.loads((tmp_path / "g2" / "training.json").read_text())["grounding"]
    assert record == {"steps": 30, "loss": round(float(np.mean(losses[-50:])), 4)}  # resumed: same losses as straight


def test_grounding_recipe_validation(tmp_path):
    from synthseg.train.grounding import load_grounding_recipe

    (tmp_path / "r.yaml").write_text("split: voc-15-5\ntriplets: {seen: [dog, sofa]}\n")
    with pytest.raises(SynthsegError, match=r"not seen in split 'voc-15-5': \['sofa'\]"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\nmodel: {fuse: 3}\n")
    with pytest.raises(SynthsegError, match=r"unknown GroundingModelRecipe field\(s\) \['fuse'\]"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\nmodel: {fuse_dim: big}\n")  # typed: refused at load, naming the field
    with pytest.raises(SynthsegError, match="model: fuse_dim: expected int, got 'big'"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\nmodel: {cross_attention: true}\ntriplets: {cross_attention: false}\n")
    with pytest.raises(SynthsegError, match="model.cross_attention reads cross-attention maps that triplets.cross_attention: false"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\npipeline: world\n")  # the world model draws no VOC class
    with pytest.raises(SynthsegError, match="model 'world' cannot draw 'aeroplane'"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\npipeline: sd\nscore_threshold: 1.5\n")
    with pytest.raises(SynthsegError, match="score_threshold and mask_threshold lie in"):
        load_grounding_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("split: voc-15-5\npipeline: sd\nscore_threshold: 0.3\n")
    loaded = load_grounding_recipe(tmp_path / "r.yaml")
    assert "sofa" not in loaded.triplets.seen and loaded.annotator_thresholds == {"score_threshold": 0.3}
    # command-line overrides go through the same validation; None leaves the recipe's value
    loaded = load_grounding_recipe(tmp_path / "r.yaml", train=dict(steps=7, zero_masks=None), model=dict(cross_attention=False))
    assert loaded.train.steps == 7 and loaded.train.zero_masks is False and loaded.model.cross_attention is False
    with pytest.raises(SynthsegError, match="train: steps must be at least 1, got 0"):
        load_grounding_recipe(tmp_path / "r.yaml", train=dict(steps=0))
    with pytest.raises(SynthsegError, match="unknown TripletRecipe field"):
        load_grounding_recipe(tmp_path / "r.yaml", triplets=dict(counts=3))
    with pytest.raises(SynthsegError, match="count must be at least 1, got 0"):
        load_grounding_recipe(tmp_path / "r.yaml", triplets=dict(count=0))
    (tmp_path / "r.yaml").write_text("split: voc-15-5\npipeline: sd\ntrain: 3\n")
    with pytest.raises(SynthsegError, match="train must be a mapping"):
        load_grounding_recipe(tmp_path / "r.yaml", train=dict(steps=7))


def test_online_training_matches_the_cache_format_and_resumes_exactly(pipe, tmp_path):
    from synthseg.train.grounding import GroundingModelRecipe, GroundingRecipe, TrainRecipe, train_grounding
    from synthseg.triplets import OnlineTriplets

    online = OnlineTriplets(pipe, FakeAnnotator(), recipe())
    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4), tmp_path / "t")
    cached = next(TripletShards(tmp_path / "t").batches(2))
    batch = next(online.batches(2))
    assert online.layout() == TripletShards(tmp_path / "t").layout()
    assert [f.shape for f in batch["features"]] == [f.shape for f in cached["features"]]
    assert batch["masks"].shape == cached["masks"].shape and batch["missing"][:, 0].logical_not().all()
    model = dict(fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2, attention_pooling=True)
    train = TrainRecipe(steps=4, batch_size=2, lr=3e-3, warmup_steps=1, checkpoint_every=2, query_dropout=0.5)
    r = GroundingRecipe(split="voc-15-5", model=GroundingModelRecipe(**model), train=train)
    straight = train_grounding(r, online, tmp_path / "w1", tmp_path / "g1")
    train_grounding(r, online, tmp_path / "w2", tmp_path / "g2", max_steps=2)
    resumed = train_grounding(r, online, tmp_path / "w2", tmp_path / "g2")
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_triplets_with_cross_attention_maps_train_with_and_without_them(pipe, tmp_path):
    from synthseg.train.grounding import GroundingModelRecipe, GroundingRecipe, TrainRecipe, train_grounding

    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4, cross_attention=True), tmp_path / "t")
    shards = TripletShards(tmp_path / "t")
    layout = shards.layout()
    assert layout["cross_attention_strides"] and layout["text_tokens"] == pipe.tokenizer.model_max_length
    item = next(iter(shards))
    assert [a.shape[0] for a in item["attention"]] == [layout["text_tokens"]] * len(layout["cross_attention_strides"])
    model = dict(fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2)
    train = TrainRecipe(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2)
    with_maps = train_grounding(GroundingRecipe(split="voc-15-5", model=GroundingModelRecipe(**model), train=train), shards,
                                tmp_path / "w1", tmp_path / "g1")
    without = train_grounding(GroundingRecipe(split="voc-15-5", model=GroundingModelRecipe(**model, cross_attention=False), train=train),
                              shards, tmp_path / "w2", tmp_path / "g2")
    assert with_maps.config.cross_attention_strides == layout["cross_attention_strides"]
    assert without.config.cross_attention_strides == [] and without.config.text_tokens == 0


def test_triplets_store_each_classs_attention_hold_classes_out_and_train_and_generate_with_pooling(pipe, tmp_path):
    from synthseg import generate_grounded
    from synthseg.train.grounding import GroundingModelRecipe, GroundingRecipe, TrainRecipe, train_grounding

    make_triplets(pipe, FakeAnnotator(), recipe(count=4, shard_size=4, seed=2), tmp_path / "t")  # two pairs, two single classes
    shards = TripletShards(tmp_path / "t")
    latent = pipe.unet.config.sample_size
    items = list(shards)
    assert len(items) == 4 and any(not i["valid"].all() for i in items)  # one-class prompts pad the second query
    for item in items:
        assert item["class_attention"].shape == (2, latent, latent) and (item["class_attention"] >= 0).all()
        assert [bool(m.any()) for m in item["class_attention"]] == item["valid"].tolist()  # padding rows are zero
    held = shards.records()[0]["classes"][0]
    subset = TripletShards(tmp_path / "t", exclude=[held])
    kept = [r for r in shards.records() if held not in r["classes"]]
    assert subset.records() == kept and len(list(subset)) == len(subset) == len(kept) < 4
    model = dict(fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2, attention_pooling=True)
    train = TrainRecipe(steps=2, batch_size=2, lr=1e-3, warmup_steps=1, checkpoint_every=2)
    module = train_grounding(GroundingRecipe(split="voc-15-5", model=GroundingModelRecipe(**model), train=train), shards,
                             tmp_path / "w", tmp_path / "g")
    assert module.config.attention_pooling
    result = generate_grounded(pipe, module, ["a photograph of a dog and a cat", "a photograph of a train"], [["dog", "cat"], ["train"]],
                               [0, 1], num_inference_steps=2, guidance_scale=2.0)
    assert [m.shape for m in result.masks] == [(2, 32, 32), (1, 32, 32)]


def test_query_dropout_zeroes_a_share_of_queries_drawn_from_the_seed_alone():
    from synthseg.train.grounding import TrainRecipe, drop_queries

    queries = torch.ones(64, 2, 8)
    dropped = drop_queries(queries, 0.3, [0, 5])
    zeroed = (dropped == 0).all(-1)
    assert ((dropped == 0) | (dropped == 1)).all() and (zeroed == (dropped == 0).any(-1)).all()  # whole queries only
    assert 0.2 < zeroed.float().mean() < 0.4
    assert torch.equal(drop_queries(queries, 0.3, [0, 5]), dropped) and not torch.equal(drop_queries(queries, 0.3, [0, 6]), dropped)
    assert drop_queries(queries, 0.0, [0, 5]) is queries
    with pytest.raises(SynthsegError, match="query_dropout must lie in"):
        load_config(TrainRecipe, {"query_dropout": 1.0}, "train")


def test_a_triplet_stores_exactly_the_features_generate_grounded_reads(pipe, tmp_path):
    """One capture pass serves both: the module trains on what it will read at generation time."""
    from safetensors import safe_open

    from synthseg import CaptureStep, GroundingConfig, GroundingModule, class_token_spans, generate_grounded
    from synthseg.grounding import class_attention_input

    r = recipe(count=2, shard_size=2, batch_size=2, feature_dtype="float32", cross_attention=True)
    make_triplets(pipe, FakeAnnotator(), r, tmp_path / "t")
    planned = [triplet_prompt(r, i) for i in range(2)]
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, fuse_dim=16, mask_dim=16,
                                                          hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2)).eval()
    result = generate_grounded(pipe, module, [p.prompt for p in planned], [p.classes for p in planned], [p.seed for p in planned],
                               guidance_scale=r.guidance_scale, num_inference_steps=r.num_inference_steps,
                               capture_step=CaptureStep(r.capture_timestep), return_features=True)
    with safe_open(tmp_path / "t" / "shard-00000.safetensors", framework="pt") as stored:
        assert [k.removeprefix("features.") for k in stored.keys() if k.startswith("features.")] == sorted(result.features.blocks)
        for name, block in result.features.blocks.items():
            assert torch.equal(stored.get_tensor(f"features.{name}"), block), name
        spans = class_token_spans(pipe.tokenizer, [p.prompt for p in planned], [p.classes for p in planned])
        pooled = class_attention_input(result.features, spans, 2)
        assert torch.equal(stored.get_tensor("class_attention"), pooled)


def test_image_captured_triplets_name_absent_classes_with_empty_targets_and_store_what_segment_reads(pipe, tmp_path, monkeypatch):
    """capture_from: image replays the finished image as `synthseg segment` reads a real one, so a module
    trained on it learns to leave a named absent class empty (negatives), on the features it will read."""
    import PIL.Image
    from safetensors import safe_open

    from synthseg import GroundingConfig, GroundingModule, segment
    from synthseg.segment import GroundingSegmenter

    class Recording(FakeAnnotator):
        images = []

        def annotate(self, images, class_names):
            self.images += list(images)
            return super().annotate(images, class_names)

    annotator = Recording()
    r = recipe(count=8, shard_size=8, batch_size=4, capture_from="image", negatives=0.5, feature_dtype="float32", cross_attention=True)
    make_triplets(pipe, annotator, r, tmp_path / "t")
    records = TripletShards(tmp_path / "t").records()
    negatives = 0
    for rec in records:
        prompted = triplet_prompt(r, rec["index"]).classes
        assert rec["prompted"] == list(prompted) and len(rec["classes"]) == 2 and len(set(rec["classes"])) == 2
        assert all(name in rec["query_prompt"] for name in rec["classes"])
        for name, gone in zip(rec["classes"], rec["missing"]):
            assert gone == (name in prompted and name != prompted[0])  # the fake annotator finds only the first prompted class
            negatives += name not in prompted
    assert 0 < negatives < 16
    with safe_open(tmp_path / "t" / "shard-00000.safetensors", framework="pt") as stored:  # row i: triplet i
        blocks = {k.removeprefix("features."): stored.get_tensor(k) for k in stored.keys() if k.startswith("features.")}

    seen = {}
    original = segment.predict_masks
    monkeypatch.setattr(segment, "predict_masks", lambda module, features, *a: seen.setdefault("f", features) and original(module, features, *a))
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, cross_attention=True, attention_pooling=True, fuse_dim=16, mask_dim=16,
                                                          hidden_dim=32, num_heads=4, ffn_dim=64, token_patch=2)).eval()
    rec = records[5]
    GroundingSegmenter(pipe, module, rec["classes"], seed=r.seed).segment(PIL.Image.fromarray(annotator.images[5]), index=5)
    for name, block in seen["f"].blocks.items():
        torch.testing.assert_close(blocks[name][5], block[0].float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(SynthsegError, match="needs capture_from: image"):
        recipe(negatives=0.5)
    with pytest.raises(SynthsegError, match="negatives needs at least 4 seen classes, got 3"):
        recipe(seen=SEEN[:3], capture_from="image", negatives=0.5)


def test_copy_paste_composites_label_pasted_objects_and_capture_the_composite(pipe, tmp_path, monkeypatch):
    """copy_paste pastes another batch image's found instances over a triplet's image: the pasted class is queried
    with the pasted mask as its target, the image's own mask loses what the paste covers, the features are those
    `segment` reads of the composite, and the draws depend only on the recipe and the index."""
    import PIL.Image

    from synthseg import GroundingConfig, GroundingModule, segment
    from synthseg.segment import GroundingSegmenter
    from synthseg.triplets import _read_shard, paste_partners

    class Recording(FakeAnnotator):
        def __init__(self):
            self.images, self.found = [], []

        def annotate(self, images, class_names):
            out = super().annotate(images, class_names)
            self.images += list(images)
            self.found += out
            return out

    annotator = Recording()
    r = recipe(count=8, shard_size=8, batch_size=8, capture_from="image", copy_paste=1.0, feature_dtype="float32")
    make_triplets(pipe, annotator, r, tmp_path / "t")
    records = TripletShards(tmp_path / "t").records()
    data = _read_shard(tmp_path / "t" / "shard-00000.safetensors")
    names = [triplet_prompt(r, i).classes for i in range(8)]
    composites, instances, pasted = paste_partners(r, np.stack(annotator.images), annotator.found, names, list(range(8)))
    assert sum(p is not None for p in pasted) >= 4  # every triplet draws a paste; most find a partner
    for rec, p, own, image, original in zip(records, pasted, instances, composites, annotator.images):
        assert rec.get("pasted") == p and (p is None) == (image == original).all()
        if p is None:
            continue
        assert rec["classes"][: len(rec["prompted"])] == rec["prompted"] and set(p["classes"]) <= set(rec["classes"])
        assert len(rec["classes"]) <= 2 and p["index"] != rec["index"]
        assert not set(rec["prompted"][1:]) & set(p["classes"])  # the fake annotator misses a second prompted class
        masks = data["masks"][rec["index"]].numpy().astype(bool)
        for q, name in enumerate(rec["classes"]):
            assert (masks[q] == np.any([i.mask for i in own if i.class_name == name] or [np.zeros(masks.shape[1:], bool)], axis=0)).all()
        if rec["prompted"][0] not in p["classes"]:  # the own left-half object lost what the paste covers
            assert not (masks[0] & masks[rec["classes"].index(p["classes"][0])]).any()
            assert masks[0].sum() < annotator.found[rec["index"]][0].mask.sum()

    seen = {}
    original = segment.predict_masks
    monkeypatch.setattr(segment, "predict_masks", lambda module, features, *a: seen.setdefault("f", features) and original(module, features, *a))
    module = GroundingModule(GroundingConfig.for_pipeline(pipe, fuse_dim=16, mask_dim=16, hidden_dim=32, num_heads=4, ffn_dim=64,
                                                          token_patch=2)).eval()
    b = next(i for i, p in enumerate(pasted) if p is not None)
    GroundingSegmenter(pipe, module, records[b]["classes"], seed=r.seed).segment(PIL.Image.fromarray(composites[b]), index=b)
    for name, block in seen["f"].blocks.items():
        torch.testing.assert_close(data[f"features.{name}"][b], block[0].float(), rtol=1e-4, atol=1e-4)

    make_triplets(pipe, Recording(), r, tmp_path / "again")
    again = _read_shard(tmp_path / "again" / "shard-00000.safetensors")
    assert all(torch.equal(again[k], data[k]) for k in data) and TripletShards(tmp_path / "again").records() == records
    with pytest.raises(SynthsegError, match="copy_paste needs capture_from: image"):
        recipe(copy_paste=0.5)
    with pytest.raises(SynthsegError, match="copy_paste must lie in"):
        recipe(capture_from="image", copy_paste=1.5)
    with pytest.raises(SynthsegError, match="paste_scale_range is"):
        recipe(capture_from="image", copy_paste=0.5, paste_scale_range=[1.0, 0.5])
