"""Ad hoc: the text-to-image model as a zero-shot classifier of which classes a scene holds (Li et al. 2023, "Your
diffusion model is secretly a zero-shot classifier"; Clark & Jaini 2023): among candidate class lists, the one whose
prompt best predicts the noise added to the scene's latent, over shared (timestep, noise) draws. Records, per scene,
the denoising error of every candidate list of 1-3 of the captioner's top classes at every draw, so the choices can be
analysed offline.

    python benchmarks/adhoc/diffusion_classifier.py OUT.npz [--first 500] [--count 200] [--top 4] [--draws 32]
"""

import argparse
import itertools

import numpy as np
import torch

from synthseg.captioner import ImplicitCaptioner, Recogniser
from synthseg.latents import encode_images, pixel_tensor
from synthseg.pipeline import load_pipeline
from synthseg.prompts import describe
from synthseg.readers import read_world
from synthseg.text import encode_prompts

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--first", type=int, default=500)
parser.add_argument("--count", type=int, default=200)
parser.add_argument("--top", type=int, default=4)
parser.add_argument("--draws", type=int, default=32)
parser.add_argument("--template", default="a photograph of {}")
args = parser.parse_args()

pipe = load_pipeline("world")
captioner = ImplicitCaptioner.from_pretrained("world")
scenes = read_world(args.count, first=args.first)
names = list(scenes.class_names)
recogniser = Recogniser(pipe, captioner, names, 3)
scheduler = pipe.scheduler
alphas = scheduler.alphas_cumprod
timesteps = ((np.arange(args.draws) + 0.5) / args.draws * 1000).astype(int)  # stratified over the whole schedule

truths, logits_all, candidates_all, errors_all = [], [], [], []
with torch.no_grad():
    for index in range(len(scenes)):
        image, labels = scenes[index]
        truths.append([names.index(n) for n in scenes.classes_in(labels)])
        latent = encode_images(pipe, pixel_tensor(np.asarray(image)))
        logits = recogniser.captioner.class_logits(latent, recogniser.embeddings)[0]
        logits_all.append(logits.numpy())
        top = sorted(logits.argsort(descending=True)[: args.top].tolist())
        lists = [list(c) for k in (1, 2, 3) for c in itertools.combinations(top, k)]
        candidates_all.append(lists)
        generator = torch.Generator().manual_seed(index)
        noise = torch.randn((args.draws, *latent.shape[1:]), generator=generator)
        t = torch.from_numpy(timesteps)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latent + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * latent  # v-prediction
        prompts = [args.template.format(describe([names[i] for i in c])) for c in lists]
        embeds = encode_prompts(pipe, prompts, guidance_scale=1.0).embeds
        rows = []
        for e in embeds:
            pred = pipe.unet(noisy, t, encoder_hidden_states=e[None].expand(args.draws, -1, -1)).sample
            rows.append(((pred - target) ** 2).mean((1, 2, 3)).numpy())
        errors_all.append(np.stack(rows))
        if index % 20 == 0:
            print(index, flush=True)
np.savez(args.out, truths=np.array(truths, dtype=object), logits=np.stack(logits_all), candidates=np.array(candidates_all, dtype=object),
         errors=np.array(errors_all, dtype=object), timesteps=timesteps, names=np.array(names))
