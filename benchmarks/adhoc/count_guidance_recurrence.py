"""Ad hoc: counting guidance with self-recurrence (Bansal et al. 2023, universal guidance's "per-step self-recurrence").

`guidance.CountGuidance` moves each guided step's prediction once, along the counter's gradient on the decoded x0_hat.
With recurrence K, a guided step is taken K times: after each guided step from x_t to x_t-1, x_t-1 is noised back to
x_t (fresh noise of the step's variance), the UNet is called again on it with the same inputs as the pipeline's own
call (classifier-free guidance at the pipeline's scale, GLIGEN's boxes, box attention), and guided again; the last
of the K goes on. It runs `layout_candidates_guided.py` (the card's layouts, candidates and judges) with the guidance
so changed; a DDPM-type scheduler (world-layout's DDIM) only. `bench` instead makes the card's row of bench_layouts.py
(its 200 layouts of stream 9, the card's candidates chosen by the captioner and counter; not the pairs), and the annotator's
own choice among the same candidates (the upper bound of any judge), and the choice with the counter read over each image and
its mirror image (`layout_candidates_guided.MirroredCounter`).

    cd benchmarks && python adhoc/count_guidance_recurrence.py K [COUNT] [N]
    cd benchmarks && python adhoc/count_guidance_recurrence.py K bench
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import layout_candidates_guided  # noqa: E402

from synthseg import guidance  # noqa: E402
from synthseg.capture import denoiser_of  # noqa: E402


class RecurrentCountGuidance(guidance.CountGuidance):
    recurrence = 1

    def __enter__(self):
        scheduler, unet = self.pipe.scheduler, denoiser_of(self.pipe)
        step, self._outer = scheduler.step, vars(scheduler).get("step")
        self._taken, self._call = 0, None
        self._noise = torch.Generator().manual_seed(0)

        def record(module, args, kwargs):
            self._call = (args, kwargs)

        @functools.wraps(step)
        def guided(model_output, timestep, sample, *args, **kwargs):
            if self._taken < self.steps:
                model_output = self.guide(model_output, timestep, sample)
                for _ in range(self.recurrence - 1):
                    sample = self.renoise(step(model_output, timestep, sample, *args, **{**kwargs, "return_dict": False})[0], timestep)
                    model_output = self.guide(self.predict(sample, timestep), timestep, sample)
            self._taken += 1
            return step(model_output, timestep, sample, *args, **kwargs)

        scheduler.step = guided
        self._hook = unet.register_forward_pre_hook(record, with_kwargs=True)
        return self

    def renoise(self, previous: torch.Tensor, timestep) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        t = int(timestep)
        before = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        a_t = scheduler.alphas_cumprod[t]
        a_prev = scheduler.alphas_cumprod[before] if before >= 0 else scheduler.final_alpha_cumprod
        ratio = a_t / a_prev
        noise = torch.randn(previous.shape, generator=self._noise).to(previous.device, previous.dtype)
        return ratio.sqrt() * previous + (1 - ratio).sqrt() * noise

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        args, kwargs = self._call
        doubled = torch.cat([sample] * 2)
        out = denoiser_of(self.pipe)(doubled, *args[1:], **kwargs).sample
        uncond, text = out.chunk(2)
        return uncond + self.pipe._guidance_scale_for_recurrence * (text - uncond)


def main() -> None:
    RecurrentCountGuidance.recurrence = int(sys.argv[1])
    guidance.CountGuidance = RecurrentCountGuidance
    original = layout_candidates_guided.load_pipeline

    def load(spec):
        pipe = original(spec)
        pipe._guidance_scale_for_recurrence = layout_candidates_guided.model_card(spec).guidance_scale
        return pipe

    layout_candidates_guided.load_pipeline = load
    if sys.argv[2:] == ["bench"]:
        bench(load)
        return
    sys.argv = [sys.argv[0], *sys.argv[2:]]
    layout_candidates_guided.main()


def bench(load) -> None:
    from dataclasses import replace

    import numpy as np
    from bench_layouts import BENCH_SEED, annotated, annotator_picks, candidate_images, chosen, judge, judge_picks

    from synthseg.annotators import load_annotator
    from synthseg.captioner import ImplicitCaptioner, Recogniser
    from synthseg.counter import CountJudge
    from synthseg.dataset import load_dataset_recipe
    from synthseg.layouts import sample_layouts
    from synthseg.registry import model_card
    from synthseg.world import WORLD_CLASSES

    section = replace(load_dataset_recipe("world", layouts=True, model="world-layout", captioner="world").layouts, seed=BENCH_SEED)
    card, pipe = model_card("world-layout"), load("world-layout")
    pipe.set_progress_bar_config(disable=True)
    layouts = sample_layouts(section, list(WORLD_CLASSES), [], 200)
    counter = CountJudge.from_pretrained("world-layout")
    recogniser = Recogniser(pipe, ImplicitCaptioner.from_pretrained("world"), list(WORLD_CLASSES))
    made = candidate_images(pipe, layouts, card.num_inference_steps, card.guidance_scale, section.scheduled_sampling_beta,
                            section.box_attention, section.candidates, counter, section.count_guidance)
    many = np.array([len(lay.phrases) >= 2 for lay in layouts])
    annotator = load_annotator("world")
    scores = judge(annotated(annotator, chosen(pipe, layouts, made, recogniser, counter), layouts), layouts)
    print(f"recurrence {RecurrentCountGuidance.recurrence}: boxes hit {100 * scores['hits'].mean():.1f}%, right counts "
          f"{100 * scores['counts'][many].mean():.1f}% of {many.sum()}", flush=True)
    mirrored = judge(annotated(annotator, chosen(pipe, layouts, made, recogniser, layout_candidates_guided.MirroredCounter(counter)), layouts),
                     layouts)
    print(f"chosen with the counter over each image and its mirror: boxes hit {100 * mirrored['hits'].mean():.1f}%, right counts "
          f"{100 * mirrored['counts'][many].mean():.1f}%", flush=True)
    # the annotator's own choice among the same candidates (most boxes hit, then the right count): what a perfect judge would keep
    records = []
    for layout, images in zip(layouts, made):
        each, n = judge(annotated(annotator, images, [layout] * len(images)), [layout] * len(images)), len(layout.phrases)
        records.append(dict(phrases=list(layout.phrases), candidates=[dict(hits=each["hits"][k * n:(k + 1) * n].tolist(), count=bool(each["counts"][k]),
                                                                           found=bool(each["found"][k])) for k in range(len(images))]))
    hits, counts, _ = judge_picks(records, annotator_picks(records, section.candidates))
    print(f"the annotator's own choice: boxes hit {hits:.1f}%, right counts {counts:.1f}%", flush=True)


if __name__ == "__main__":
    main()
