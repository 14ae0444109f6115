"""Each script, both twins, reaches a return threshold within a CPU budget on a fixed seed: the test
that tells a real implementation from a toy one."""

import pytest

from tests.helpers import check_ok, episodic_returns, run_script, scalars_of_single_run

# name: (script args, threshold, over the last N episodes); each pair adds its line here.
LEARNING = {
    "ppo": (["--env-id", "CartPole-v1", "--total-timesteps", "200000", "--seed", "1"], 450.0, 20),
    # 2 actor processes (not deterministic) with Ape-X epsilons 0.04 (rl-zoo's final epsilon) and 0.04**8:
    # with the default 0.4, the first actor's many short exploratory episodes dominate a last-20 average
    "qrdqn_actor_learner": (
        ["--env-id", "CartPole-v1", "--total-timesteps", "50000", "--num-actors", "2", "--apex-epsilon", "0.04", "--seed", "1"],
        150.0,
        20,
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
