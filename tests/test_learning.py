"""Each script, both twins, reaches a return threshold within a CPU budget on a fixed seed: the test
that tells a real implementation from a toy one."""

import re
import subprocess
from collections import deque

import numpy as np
import pytest

from tests.helpers import check_ok, episodic_returns, run_script, scalars_of_single_run, script_command

# A random policy's return, the independent fact each threshold is measured against (CartPole-v1: about 22;
# Pendulum-v1: about -1250; Breakout: about 1.3 per game).
# name: (script args, threshold, over the last N episodes, evaluation threshold); each pair adds its line
# here. Every run also saves its model and evaluates it (--eval-episodes 10): the saved weights, loaded
# back by `evaluate`, must score at least the evaluation threshold, well above random play.
LEARNING = {
    # A2C dips now and then before it settles; seeds 1-3 of both twins held 500 from 200k steps on
    "a2c": (["--env-id", "CartPole-v1", "--total-timesteps", "250000", "--seed", "1"], 300.0, 20, 100.0),
    # Pendulum-v1 (a random policy scores about -1250): the first 10 episodes average about -1330 in both
    # twins; at 100k steps the last 10 averaged -331 (MLX) and -480 (torch) on seed 1, -262 (MLX) on seed 2.
    # CleanRL's algorithm; the batch (4 x 512), gamma 0.9 and lr 1e-3 suit Pendulum's short horizon.
    "ppo_continuous_action": (
        "--env-id Pendulum-v1 --num-envs 4 --num-steps 512 --gamma 0.9 --learning-rate 1e-3 --total-timesteps 100000 --seed 1".split(),
        -700.0,
        10,
        -900.0,
    ),
    # issue 5: >= -300 on Pendulum-v1 within 15k steps; learning_starts lowered from 5000/25000
    "sac": (["--env-id", "Pendulum-v1", "--total-timesteps", "6000", "--learning-starts", "1000", "--seed", "1"], -300.0, 10, -600.0),
    "td3": (["--env-id", "Pendulum-v1", "--total-timesteps", "8000", "--learning-starts", "1000", "--seed", "1"], -300.0, 10, -600.0),
    # CleanRL's DQN hyperparameters learn slowly (a gradient step every 10 env steps) and oscillate; the
    # budget is cut (epsilon anneals over half of it) and learning starts at step 1000 instead of 10000
    "dqn": ("--env-id CartPole-v1 --total-timesteps 120000 --learning-starts 1000 --seed 1".split(), 250.0, 20, 100.0),
    "qrdqn": ("--env-id CartPole-v1 --total-timesteps 50000 --seed 1".split(), 250.0, 20, 100.0),  # rl-zoo's budget
}


@pytest.mark.learning
@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("name", list(LEARNING))
def test_reaches_threshold(name, framework, tmp_path):
    args, threshold, last_n, eval_threshold = LEARNING[name]
    proc = run_script(name, framework, *args, "--save-model", "--eval-episodes", "10", cwd=tmp_path, timeout=1200)
    check_ok(proc)
    scalars = scalars_of_single_run(tmp_path)
    returns = episodic_returns(scalars)
    assert len(returns) >= last_n, f"only {len(returns)} episodes finished"
    mean = returns[-last_n:].mean()
    assert mean >= threshold, f"{name}_{framework}: mean of last {last_n} returns {mean:.1f} < {threshold}"
    evals = np.array([v for _, v in scalars["eval/episodic_return"]])
    assert len(evals) == 10 and evals.mean() >= eval_threshold, f"{name}_{framework}: saved model evaluates to {evals}"


# name: (script args, threshold, over the last N episodes, within this many env steps). The script runs
# with its own defaults (CleanRL's schedule) and is stopped as soon as the running average gets there.
REACH = {
    "ppo": (["--env-id", "CartPole-v1", "--seed", "1"], 450.0, 20, 200_000),
    # CleanRL's C51 hyperparameters with learning from step 1000 (not 10000) and epsilon annealed over half
    # of a 150k budget. C51 on CartPole climbs to 500 and then oscillates, so a final-mean test would be a
    # coin toss: the 20-episode mean first reached 250 at step 49,803 (MLX) and 111,829 (torch) on seed 1;
    # seeds 2 and 3 got there at 70,757 / 52,467 (MLX) and 98,317 / 115,701 (torch).
    "c51": ("--env-id CartPole-v1 --total-timesteps 150000 --learning-starts 1000 --seed 1".split(), 250.0, 20, 150_000),
    # 2 actor processes (not deterministic) with Ape-X epsilons 0.04 (rl-zoo's final epsilon) and 0.04**8:
    # with the default base 0.4 the first actor's many short exploratory episodes dominate a 20-episode mean
    "qrdqn_actor_learner": (
        ["--env-id", "CartPole-v1", "--total-timesteps", "50000", "--num-actors", "2", "--apex-epsilon", "0.04", "--seed", "1"],
        150.0,
        20,
        50_000,
    ),
}
EPISODE_LINE = re.compile(r"global_step=(\d+), episodic_return=([-\d.]+)")


@pytest.mark.learning
@pytest.mark.parametrize("framework", ["mlx", "torch"])
@pytest.mark.parametrize("name", list(REACH))
def test_reaches_threshold_within_steps(name, framework, tmp_path):
    args, threshold, last_n, max_steps = REACH[name]
    cmd, env = script_command(name, framework, *args)
    window, best, step = deque(maxlen=last_n), -np.inf, 0
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tail = deque(maxlen=40)
        for line in proc.stdout:
            tail.append(line)
            match = EPISODE_LINE.match(line)
            if not match:
                continue
            step = int(match.group(1))
            if step > max_steps:
                break
            window.append(float(match.group(2)))
            if len(window) == last_n:
                best = max(best, float(np.mean(window)))
                if best >= threshold:
                    break
    finally:
        proc.kill()
        proc.wait()
    assert step > 0, "no episode finished:\n" + "".join(tail)
    assert best >= threshold, (
        f"{name}_{framework}: best mean of {last_n} consecutive returns within {max_steps} steps was {best:.1f} < {threshold}"
    )
