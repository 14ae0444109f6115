"""Bad input stops a script with one clear line before anything runs (no runs/ directory)."""

import pytest

from tests.helpers import assert_rejected, run_script

# (script, args, a fragment of the expected message); each pair adds its cases.
BAD = [
    ("ppo", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("ppo", ["--env-id", "NoSuchEnv-v0"], "unknown env id"),
    ("ppo", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo", ["--total-timesteps", "0"], "must be positive"),
    ("ppo", ["--total-timesteps", "-5"], "must be positive"),
    ("ppo", ["--total-timesteps", "100"], "less than one rollout"),
    ("allo", ["--env-id", "GridRoom-5"], "unknown layout"),
    ("allo", ["--layout-file", "no/such/layout.txt"], "cannot read --layout-file"),
    ("allo", ["--env-id", "GridRoomSmallAsym-1", "--d", "31"], "number of free cells (30)"),
    ("allo", ["--d", "0"], "--d must be between 1"),
    ("allo", ["--batch-size", "0"], "must be positive"),
    ("allo", ["--total-train-steps", "-1"], "must be positive"),
    ("a2c", ["--env-id", "Blackjack-v1"], "only Box observation spaces"),
    ("a2c", ["--env-id", "NoSuchEnv-v0"], "unknown env id"),
    ("a2c", ["--num-steps", "0"], "must be positive"),
    ("a2c", ["--total-timesteps", "-5"], "must be positive"),
    ("a2c", ["--total-timesteps", "19"], "less than one rollout"),
    ("qrdqn_actor_learner", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("qrdqn_actor_learner", ["--num-actors", "-1"], "--num-actors must be 0"),
    ("qrdqn_actor_learner", ["--total-timesteps", "500"], "leaves no steps to learn from"),
    ("ppo_atari", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env"),
    ("ppo_atari", ["--env-id", "NoSuchNoFrameskip-v4"], "unknown env id"),
    ("ppo_atari", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("dqn_atari", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env"),
    ("dqn_atari", ["--num-envs", "2"], "--num-envs must be 1"),
    ("dqn_atari", ["--learning-starts", "500", "--total-timesteps", "400"], "--learning-starts 500 must be in"),
    ("ppo_continuous_action", ["--env-id", "CartPole-v1"], "only continuous action spaces"),
    ("ppo_continuous_action", ["--env-id", "NoSuchEnv-v0"], "unknown env id"),
    ("ppo_continuous_action", ["--num-steps", "100", "--num-minibatches", "32"], "not divisible"),
    ("ppo_continuous_action", ["--total-timesteps", "0"], "must be positive"),
    ("ppo_continuous_action", ["--total-timesteps", "1000"], "less than one rollout"),
    ("sac", ["--env-id", "CartPole-v1"], "only continuous (Box) action spaces"),
    ("sac", ["--env-id", "NoSuchEnv-v0"], "unknown env id"),
    ("sac", ["--batch-size", "0"], "must be positive"),
    ("td3", ["--env-id", "CartPole-v1"], "only continuous (Box) action spaces"),
    ("td3", ["--learning-starts", "-1"], "must be non-negative"),
    ("ddpg", ["--env-id", "CartPole-v1"], "only continuous (Box) action spaces"),
    ("ddpg", ["--total-timesteps", "0"], "must be positive"),
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
    assert_rejected(proc, message, tmp_path)
