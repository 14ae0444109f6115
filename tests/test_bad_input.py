"""Bad input stops a script with one clear line before anything runs.

Two layers: every script's `check_args` is driven in-process through a table of bad values for every
field it has (fast, so the table can be complete), and one run per script and message kind goes through
the real command line to show that the script calls `check_args` first: one line on stderr, no
traceback, no runs/ directory.
"""

import dataclasses

import pytest
import tyro

from benchmark.pairs import discover
from tests.helpers import assert_rejected, load_script, run_script

PAIRS = discover()
FRAMEWORKS = ("mlx", "torch")

# field: (a bad value, the start of the message). A script is tested on every field its Args has.
FIELD_RULES = {
    "total_timesteps": ("0", "--total-timesteps must be positive"),
    "learning_rate": ("-0.001", "--learning-rate must be positive"),
    "policy_lr": ("0", "--policy-lr must be positive"),
    "q_lr": ("-1e-3", "--q-lr must be positive"),
    "num_envs": ("0", "--num-envs must be"),
    "num_steps": ("-1", "--num-steps must be positive"),
    "num_minibatches": ("0", "--num-minibatches must be positive"),
    "update_epochs": ("0", "--update-epochs must be positive"),
    "batch_size": ("0", "--batch-size must be positive"),
    "buffer_size": ("0", "--buffer-size must be positive"),
    "gamma": ("1.5", "--gamma must be in [0, 1]"),
    "gae_lambda": ("-0.1", "--gae-lambda must be in [0, 1]"),
    "tau": ("0", "--tau must be in (0, 1]"),
    "clip_coef": ("-0.2", "--clip-coef must be positive"),
    "max_grad_norm": ("-1", "--max-grad-norm must be positive"),
    "ent_coef": ("-0.01", "--ent-coef must be non-negative"),
    "vf_coef": ("-0.5", "--vf-coef must be non-negative"),
    "target_kl": ("-0.01", "--target-kl must be"),
    "start_e": ("1.5", "--start-e must be in [0, 1]"),
    "end_e": ("-0.1", "--end-e must be in [0, 1]"),
    "exploration_fraction": ("0", "--exploration-fraction must be in (0, 1]"),
    "exploration_noise": ("-0.1", "--exploration-noise must be non-negative"),
    "policy_noise": ("-0.2", "--policy-noise must be non-negative"),
    "noise_clip": ("-0.5", "--noise-clip must be positive"),
    "learning_starts": ("-1", "--learning-starts must be non-negative"),
    "device": ("tpu", '--device must be "gpu" or "cpu"'),
    "q_lambda": ("1.5", "--q-lambda must be in [0, 1]"),
}
# Cases that are not one field out of range: (scripts, args, the message fragment).
DISCRETE = ["ppo", "a2c", "dqn", "c51", "qrdqn", "qrdqn_actor_learner", "pqn"]
CONTINUOUS = ["ppo_continuous_action", "sac", "td3", "ddpg"]
CASES = [
    *[(n, ["--env-id", "NoSuchEnv-v0"], "unknown env id") for n in DISCRETE + CONTINUOUS],
    *[(n, ["--env-id", "FrozenLake-v1"], "flat Box observation spaces") for n in DISCRETE],
    *[(n, ["--env-id", "Blackjack-v1"], "flat Box observation spaces") for n in ["ppo", "dqn", "c51"]],
    *[(n, ["--env-id", "LunarLander-v3"], "needs a package that is not installed") for n in DISCRETE],
    *[(n, ["--env-id", "LunarLanderContinuous-v3"], "needs a package that is not installed") for n in CONTINUOUS],
    *[(n, ["--env-id", "Pendulum-v1"], "only discrete action spaces") for n in DISCRETE if n != "a2c"],
    *[(n, ["--env-id", "CartPole-v1"], "only continuous") for n in CONTINUOUS],
    *[(n, ["--learning-starts", "500", "--total-timesteps", "500"], "--learning-starts") for n in ["sac", "td3", "ddpg"]],
    *[
        (n, ["--exploration-fraction", "-0.5"], "--exploration-fraction must be in (0, 1]")
        for n in ["dqn", "c51", "qrdqn", "dqn_atari", "pqn"]
    ],
    ("ppo", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo", ["--total-timesteps", "100"], "less than one rollout"),
    ("pqn", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("pqn", ["--total-timesteps", "100"], "less than one rollout"),
    ("pqn", ["--q-lambda", "-0.1"], "--q-lambda must be in [0, 1]"),
    ("ppo_continuous_action", ["--num-steps", "100", "--num-minibatches", "32"], "not divisible"),
    ("ppo_continuous_action", ["--total-timesteps", "1000"], "less than one rollout"),
    ("a2c", ["--total-timesteps", "19"], "less than one rollout"),
    ("ppo_atari", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env"),
    ("ppo_atari", ["--env-id", "NoSuchNoFrameskip-v4"], "unknown env id"),
    ("ppo_atari", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo_atari_multigpu", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env; try ppo_"),
    ("ppo_atari_multigpu", ["--local-num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo_atari_multigpu", ["--total-timesteps", "1000"], "less than one rollout of all ranks (1 x 1024 steps)"),
    ("ppo_atari_multigpu", ["--num-envs", "8"], "--num-envs must be left out"),
    ("ppo_atari_lstm", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env; try ppo_"),
    ("ppo_atari_lstm", ["--num-envs", "6", "--num-minibatches", "4"], "num_envs = 6 is not divisible"),  # whole sequences
    ("ppo_atari_lstm", ["--total-timesteps", "1000"], "less than one rollout"),
    ("dqn_atari", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env"),
    ("ppo_atari_envpool", ["--env-id", "BreakoutNoFrameskip-v4"], "not in envpool's registry"),
    ("ppo_atari_envpool", ["--env-id", "ALE/Breakout-v5"], "not in envpool's registry"),
    ("ppo_atari_envpool", ["--env-id", "CartPole-v1"], "not an envpool Atari env; try ppo_"),
    ("ppo_atari_envpool", ["--env-id", "Ant-v5"], "not an envpool Atari env"),
    ("ppo_atari_envpool", ["--num-envs", "3", "--num-steps", "5", "--num-minibatches", "4"], "not divisible"),
    ("ppo_atari_envpool", ["--total-timesteps", "1000"], "less than one rollout"),
    ("dqn_atari", ["--num-envs", "2"], "--num-envs must be 1"),
    ("dqn_atari", ["--learning-starts", "500", "--total-timesteps", "400"], "--learning-starts 500 must be"),
    ("dqn", ["--num-envs", "2"], "--num-envs must be 1"),
    ("c51", ["--v-min", "10", "--v-max", "-10"], "--v-min < --v-max"),
    ("qrdqn", ["--gradient-steps", "0"], "must be positive"),
    ("qrdqn", ["--total-timesteps", "500"], "--learning-starts"),
    ("qrdqn_actor_learner", ["--num-actors", "-1"], "--num-actors must be 0"),
    ("qrdqn_actor_learner", ["--total-timesteps", "500"], "--learning-starts 1000 must be less than --total-timesteps 500"),
    ("allo", ["--env-id", "GridRoom-5"], "unknown layout"),
    ("allo", ["--layout-file", "no/such/layout.txt"], "cannot read --layout-file"),
    ("allo", ["--env-id", "GridRoomSmallAsym-1", "--d", "31"], "number of free cells (30)"),
    ("allo", ["--d", "0"], "--d must be between 1"),
]
MODULES = {}


def module(name, framework):
    if (name, framework) not in MODULES:
        MODULES[name, framework] = load_script(name, framework)
    return MODULES[name, framework]


# Numeric fields that may take any value, or that the script computes after parsing (PPO's and A2C's
# batch sizes): every other int or float field must reject -1, with the rule above or by default.
FREE = {"seed", "v_min", "v_max", "minibatch_size", "num_iterations", "local_batch_size", "local_minibatch_size", "world_size"}


def field_cases():
    for name in PAIRS:
        for framework in FRAMEWORKS:
            fields = dataclasses.fields(module(name, framework).Args)
            on_policy = any(f.name == "num_steps" for f in fields)
            for f in fields:
                flag = f"--{f.name.replace('_', '-')}"
                if f.name in FIELD_RULES:
                    value, message = FIELD_RULES[f.name]
                elif f.type in (int, float) and f.name not in FREE:
                    value, message = "-1", f"{flag} must be"
                else:
                    continue
                if not (on_policy and f.name == "batch_size"):
                    yield name, framework, [flag, value], message


ALL_CASES = list(field_cases()) + [(n, fw, a, m) for n, a, m in CASES for fw in FRAMEWORKS]


@pytest.mark.parametrize("name,framework,args,message", ALL_CASES)
def test_check_args_rejects(name, framework, args, message):
    mod = module(name, framework)
    parsed = tyro.cli(mod.Args, args=args)
    with pytest.raises(SystemExit) as stop:
        mod.check_args(parsed, f"{name}_{framework}.py")
    text = str(stop.value.code)
    assert "\n" not in text.strip() and message in text, text
    assert text.startswith(f"{name}_{framework}.py: "), "the message names the script"


# Through the command line: one case per script and kind of message (the script calls check_args first).
CLI = [
    ("ppo", ["--env-id", "Pendulum-v1"], "only discrete action spaces"),
    ("ppo", ["--env-id", "FrozenLake-v1"], "flat Box observation spaces"),
    ("ppo", ["--gamma", "2"], "--gamma must be in [0, 1]"),
    ("a2c", ["--env-id", "LunarLander-v3"], "needs a package that is not installed"),
    ("ppo_continuous_action", ["--env-id", "CartPole-v1"], "only continuous"),
    ("ppo_atari", ["--env-id", "CartPole-v1"], "not an Atari (ALE) env"),
    ("ppo_atari_envpool", ["--env-id", "BreakoutNoFrameskip-v4"], "not in envpool's registry"),
    ("ppo_atari_lstm", ["--num-envs", "6", "--num-minibatches", "4"], "num_envs = 6 is not divisible"),
    ("ppo_atari_multigpu", ["--num-envs", "8"], "--num-envs must be left out"),
    ("dqn_atari", ["--exploration-fraction", "0"], "--exploration-fraction must be in (0, 1]"),
    ("dqn", ["--exploration-fraction", "0"], "--exploration-fraction must be in (0, 1]"),
    ("c51", ["--env-id", "Blackjack-v1"], "flat Box observation spaces"),
    ("qrdqn", ["--tau", "1.5"], "--tau must be in (0, 1]"),
    ("qrdqn_actor_learner", ["--num-actors", "-1"], "--num-actors must be 0"),
    ("sac", ["--learning-starts", "500", "--total-timesteps", "500"], "--learning-starts"),
    ("td3", ["--policy-noise", "-1"], "--policy-noise must be non-negative"),
    ("ddpg", ["--exploration-noise", "-1"], "--exploration-noise must be non-negative"),
    ("allo", ["--d", "0"], "--d must be between 1"),
    ("pqn", ["--q-lambda", "1.5"], "--q-lambda must be in [0, 1]"),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("name,args,message", CLI)
def test_bad_input_is_one_clear_line(name, args, message, framework, tmp_path):
    proc = run_script(name, framework, *args, cwd=tmp_path, timeout=120)
    assert_rejected(proc, message, tmp_path)


def test_device_is_gpu_or_cpu(tmp_path):
    proc = run_script("ppo", "mlx", "--device", "tpu", cwd=tmp_path, timeout=120)
    assert_rejected(proc, '--device must be "gpu" or "cpu"', tmp_path)


def test_tyro_parses_every_table_case():
    """The table's arguments are real flags of each script (a typo would make a case test nothing)."""
    for name, framework, args, _ in ALL_CASES:
        tyro.cli(module(name, framework).Args, args=args)
