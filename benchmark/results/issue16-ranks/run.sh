export OMP_NUM_THREADS=1
M=/work/main/cleanrl_mlx/ppo_atari_multigpu_mlx.py
T=/work/main/cleanrl_torch_reference/ppo_atari_multigpu_torch.py
A="--local-num-envs 8 --seed 1"
for d in mlx1 mlx2 mlx2pin torch1 torch2; do mkdir -p $d; done
(cd mlx1 && /usr/bin/time -f "%e s wall %U user" python $M $A --total-timesteps 6144)
(cd mlx2 && /usr/bin/time -f "%e s wall %U user" mlx.launch -n 2 -- python $M $A --total-timesteps 12288)
(cd mlx2pin && /usr/bin/time -f "%e s wall %U user" mlx.launch -n 2 -- bash -c "exec taskset -c \$MLX_RANK python $M $A --total-timesteps 12288")
(cd torch1 && /usr/bin/time -f "%e s wall %U user" python $T $A --total-timesteps 6144)
(cd torch2 && /usr/bin/time -f "%e s wall %U user" torchrun --standalone --nproc_per_node 2 $T $A --total-timesteps 12288)
