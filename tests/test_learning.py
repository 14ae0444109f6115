"""Each script, both twins, reaches a return threshold within a CPU budget on a fixed seed: the test
that tells a real implementation from a toy one."""

import pytest

from tests.helpers import check_ok, episodic_returns, run_script, scalars_of_single_run

# name: (script args, threshold, over the last N episodes); each pair adds its line here.
LEARNING = {
    "ppo": (["--env-id", "CartPole-v1", "--total-timesteps", "200000", "--seed", "1"], 450.0, 20),
    # CleanRL's DQN hyperparameters learn slowly (a gradient step every 10 env steps) and oscillate; the
    # budget is cut (epsilon anneals over half of it) and learning starts at step 1000 instead of 10000
    "dqn": ("--env-id CartPole-v1 --total-timesteps 120000 --learning-starts 1000 --seed 1".split(), 250.0, 20),
    # c51: not yet; no budget up to 150k steps found where both twins end >= 250 on a fixed seed
    "qrdqn": ("--env-id CartPole-v1 --total-timesteps 50000 --seed 1".split(), 250.0, 20),  # rl-zoo's budget
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
