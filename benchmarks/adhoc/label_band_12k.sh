#!/bin/bash
# Ad hoc trial, after label_band.sh: Protocol ii (a) at segmenter-world's 12,000 steps, seeds 0 and 1, on the band-0.5 dataset.
# Run from the repository root.
source .venv/bin/activate
W=runs/band-trial
sed 's/^seed: 0/seed: 1/' synthseg/recipes/segmenter-world.yaml > $W/segmenter-world-seed1.yaml
for s in 0 1; do
  r=segmenter-world; [ $s = 1 ] && r=$W/segmenter-world-seed1.yaml
  (OMP_NUM_THREADS=1 synthseg train-segmenter --dataset $W/data0.5 --recipe $r --out $W/seg12k-s$s > $W/train12k-s$s.log 2>&1 &&
   OMP_NUM_THREADS=1 synthseg benchmark --dataset world --segmenter $W/seg12k-s$s > $W/bench12k-s$s.log 2>&1) &
done
wait
