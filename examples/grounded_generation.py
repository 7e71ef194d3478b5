"""Grounded generation end to end on a tiny SD-architecture pipeline (random weights, untrained module).

It shows the API and the output layout, not mask quality: both models are random. It saves the
pipeline and the grounding module as folders, then runs the same path as
`synthseg generate --model DIR --grounding DIR ...` on them.

    python examples/grounded_generation.py --out out/quickstart
"""

import argparse
from pathlib import Path

import torch

from synthseg import GroundingConfig, GroundingModule, generate_grounded, load_pipeline
from synthseg.tiny import tiny_pipeline


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("out/quickstart"))
    args = parser.parse_args()

    tiny = tiny_pipeline(seed=0, sample_size=32)
    tiny.save_pretrained(args.out / "pipeline")
    torch.manual_seed(0)
    GroundingModule(GroundingConfig.for_pipeline(tiny, fuse_dim=64, mask_dim=64, hidden_dim=128, num_heads=4, ffn_dim=512)).save_pretrained(
        args.out / "grounding"
    )

    pipe = load_pipeline(args.out / "pipeline")
    grounding = GroundingModule.from_pretrained(args.out / "grounding")
    result = generate_grounded(
        pipe, grounding,
        prompts=["a photograph of a dog and a cat", "a photograph of a dining table"],
        class_names=[["dog", "cat"], ["dining table"]],
        seeds=[0, 1],
        num_inference_steps=25,
    )
    result.save(args.out / "generated")
    for prompt, names, masks in zip(result.prompts, result.class_names, result.masks):
        print(f"{prompt!r}: " + ", ".join(f"{n} mask {tuple(m.shape)}" for n, m in zip(names, masks)))
    print(f"captured step {result.step.index} (timestep {result.step.timestep}); wrote {args.out / 'generated'}")


if __name__ == "__main__":
    main()
