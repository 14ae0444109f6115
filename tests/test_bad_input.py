"""Bad input stops a script with one clear line before anything runs (no runs/ directory)."""

import pytest

from tests.helpers import run_script

# (script, args, a fragment of the expected message); each pair adds its cases.
BAD = [
    ("ppo", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("ppo", ["--env-id", "NoSuchEnv-v0"], "unknown env id"),
    ("ppo", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo", ["--total-timesteps", "0"], "must be positive"),
    ("ppo", ["--total-timesteps", "-5"], "must be positive"),
    ("ppo", ["--total-timesteps", "100"], "less than one rollout"),
    ("dqn", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("dqn", ["--total-timesteps", "0"], "must be positive"),
    ("dqn", ["--num-envs", "2"], "--num-envs must be 1"),
    ("c51", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("c51", ["--v-min", "10", "--v-max", "-10"], "--v-min < --v-max"),
    ("qrdqn", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("qrdqn", ["--gradient-steps", "0"], "must be positive"),
    ("qrdqn", ["--total-timesteps", "500"], "--learning-starts"),
]


@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("name,args,message", BAD)
def test_bad_input_is_one_clear_line(name, args, message, framework, tmp_path):
    proc = run_script(name, framework, *args, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and message in err[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists(), "the run started before rejecting its input"
