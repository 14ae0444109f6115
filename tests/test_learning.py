"""Each script, both twins, reaches a return threshold within a CPU budget on a fixed seed: the test
that tells a real implementation from a toy one."""

import pytest

from tests.helpers import check_ok, episodic_returns, run_script, scalars_of_single_run

# name: (script args, threshold, over the last N episodes); each pair adds its line here.
LEARNING = {
    "ppo": (["--env-id", "CartPole-v1", "--total-timesteps", "200000", "--seed", "1"], 450.0, 20),
    # Pendulum-v1 (a random policy scores about -1250): the first 10 episodes average about -1330 in both
    # twins; at 100k steps the last 10 averaged -331 (MLX) and -480 (torch) on seed 1, -262 (MLX) on seed 2.
    # CleanRL's algorithm; the batch (4 x 512), gamma 0.9 and lr 1e-3 suit Pendulum's short horizon.
    "ppo_continuous_action": (
        "--env-id Pendulum-v1 --num-envs 4 --num-steps 512 --gamma 0.9 --learning-rate 1e-3 --total-timesteps 100000 --seed 1".split(),
        -700.0,
        10,
    ),
}


@pytest.mark.learning
@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("name", list(LEARNING))
def test_reaches_threshold(name, framework, tmp_path):
    args, threshold, last_n = LEARNING[name]
    proc = run_script(name, framework, *args, cwd=tmp_path, timeout=1200)
    check_ok(proc)
    returns = episodic_returns(scalars_of_single_run(tmp_path))
    assert len(returns) >= last_n, f"only {len(returns)} episodes finished"
    mean = returns[-last_n:].mean()
    assert mean >= threshold, f"{name}_{framework}: mean of last {last_n} returns {mean:.1f} < {threshold}"
