#!/bin/bash
# Ad hoc trial: Protocol ii (a) at 4,000 steps (seed 0) with the dataset's ignore band at 0.0 and 0.5 (shipped 0.2: 56.1).
# Run from the repository root.
set -e
mkdir -p runs/band-trial
source .venv/bin/activate
W=runs/band-trial
for b in 0.0 0.5; do
  printf "classes: world\nper_class: 50\nper_pair: 4\nband: $b\n" > $W/band$b.yaml
  OMP_NUM_THREADS=2 synthseg make-dataset --recipe $W/band$b.yaml --out $W/data$b
done
for b in 0.0 0.5; do
  (OMP_NUM_THREADS=1 synthseg train-segmenter --dataset $W/data$b --recipe segmenter-world --train-steps 4000 --out $W/seg$b > $W/train$b.log 2>&1 &&
   OMP_NUM_THREADS=1 synthseg benchmark --dataset world --segmenter $W/seg$b > $W/bench$b.log 2>&1) &
done
wait
