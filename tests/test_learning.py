"""Each script, both twins, reaches a return threshold within a CPU budget on a fixed seed: the test
that tells a real implementation from a toy one (CI runs the MLX twins' but three; --full-learning runs them all)."""

import numpy as np
import pytest

from tests.helpers import check_ok, episodic_returns, run_script, scalars_of_single_run

# A random policy's return, the independent fact each threshold is measured against (CartPole-v1: about 22;
# Pendulum-v1: about -1250; Breakout: about 1.3 per game).
# name: (script args, threshold, over the last N episodes, evaluation threshold); each pair adds its line
# here. Every run also saves its model and evaluates it (--eval-episodes 10): the saved weights, loaded
# back by `evaluate`, must score at least the evaluation threshold, well above random play.
LEARNING = {
    # CleanRL's defaults with the budget cut to 250k (the learning rate anneals over it): seeds 1-3, the last
    # 20 averaged 435 / 481 / 429 (MLX) and 466 / 452 / 418 (torch); the saved models evaluated to 428 / 474 /
    # 418 (MLX) and 475 / 500 / 420 (torch). At 150k the last 20 were 226-380.
    "ppo": ("--env-id CartPole-v1 --total-timesteps 250000 --seed 1".split(), 250.0, 20, 250.0),
    # A2C dips now and then before it settles: at 250k steps, seeds 1-3, the last 20 averaged 500 / 500 / 120 (MLX,
    # seed 3 in a dip) and 500 / 500 / 500 (torch); the saved models evaluated to 500 / 500 / 124 and 500 / 500 / 500
    "a2c": (["--env-id", "CartPole-v1", "--total-timesteps", "250000", "--seed", "1"], 300.0, 20, 100.0),
    # Pendulum-v1 (a random policy scores about -1250): the first 10 episodes average about -1330 in both
    # twins; at 100k steps, seeds 1-3, the last 10 averaged -603 / -523 / -560 (MLX) and -480 / -1116 / -541
    # (torch); the saved models evaluated to -214 / -299 / -315 and -197 / -565 / -298.
    # CleanRL's algorithm; the batch (4 x 512), gamma 0.9 and lr 1e-3 suit Pendulum's short horizon.
    "ppo_continuous_action": (
        "--env-id Pendulum-v1 --num-envs 4 --num-steps 512 --gamma 0.9 --learning-rate 1e-3 --total-timesteps 100000 --seed 1".split(),
        -700.0,
        10,
        -900.0,
    ),
    # issue 5: >= -300 on Pendulum-v1 within 15k steps; learning_starts lowered from 5000/25000
    "sac": (
        ["--env-id", "Pendulum-v1", "--total-timesteps", "6000", "--learning-starts", "1000", "--seed", "1"],
        -300.0,
        10,
        -600.0,
    ),
    "td3": (
        ["--env-id", "Pendulum-v1", "--total-timesteps", "8000", "--learning-starts", "1000", "--seed", "1"],
        -300.0,
        10,
        -600.0,
    ),
    # CleanRL's DDPG with learning from step 1000: the first 10 episodes average about -1300; at 8k steps the
    # last 10 averaged -167 / -181 (MLX / torch) on seed 1 and -251 / -259 on seed 2, the saved model -139 /
    # -127 and -321 / -125 over 10 evaluation episodes
    "ddpg": (
        ["--env-id", "Pendulum-v1", "--total-timesteps", "8000", "--learning-starts", "1000", "--seed", "1"],
        -400.0,
        10,
        -600.0,
    ),
    # CleanRL's DQN hyperparameters learn slowly (a gradient step every 10 env steps) and oscillate; the
    # budget is cut (epsilon anneals over half of it) and learning starts at step 1000 instead of 10000
    "dqn": ("--env-id CartPole-v1 --total-timesteps 120000 --learning-starts 1000 --seed 1".split(), 250.0, 20, 100.0),
    "qrdqn": ("--env-id CartPole-v1 --total-timesteps 50000 --seed 1".split(), 250.0, 20, 100.0),  # rl-zoo's budget
    # CleanRL's PQN defaults with the budget cut from 500k to 100k (epsilon and the learning rate anneal over it):
    # seeds 1-3, the last 20 averaged 79 / 59 / 59 (MLX) and 82 / 102 / 84 (torch), the saved models evaluated to
    # 78 / 78 / 62 and 73 / 99 / 75. Started from the same weights, the twins play the same first 977 episodes.
    "pqn": ("--env-id CartPole-v1 --total-timesteps 100000 --seed 1".split(), 40.0, 20, 40.0),
    # RoadRunner: random play scores 0.0 (40 games through the script's preprocessing); running left eats
    # seeds, 100 points each. CleanRL's PPO with 2 update epochs (not 4) for time (~3 min per twin on one
    # core): seeds 1 / 2, the last 20 games averaged 1345 / 1165 (MLX) and 475 / 1245 (torch); the saved
    # models evaluated to 2230 / 1560 (MLX) and 1220 / 1000 (torch) over 10 games.
    "ppo_atari": (
        "--env-id RoadRunnerNoFrameskip-v4 --total-timesteps 40960 --update-epochs 2 --seed 1".split(),
        200.0,
        20,
        300.0,
    ),
    # RoadRunner again (random play 0.0). CleanRL's DQN learns too slowly for CI at its defaults (learning from step
    # 80k, epsilon over 1M steps): here learning starts at step 1000, epsilon reaches 0.01 at 2.4k, the target net is
    # copied every 500 steps and the learning rate is 2.5e-4 (with 1e-4 at 15k steps, MLX's seed-2 model scored 0).
    # Seeds 1-3 at 12k steps (~3.3 min per twin on one core): the last 20 games averaged 380 / 435 / 350 (MLX) and
    # 175 / 195 / 30 (torch); the saved models evaluated to 490 / 950 / 1310 and 820 / 630 / 0 over 10 games. Seed 1
    # passes in both twins with margin; torch's seed 3 learned (1300-point games at 7k steps) and then collapsed.
    "dqn_atari": (
        "--env-id RoadRunnerNoFrameskip-v4 --total-timesteps 12000 --learning-starts 1000 --exploration-fraction 0.2 "
        "--buffer-size 12000 --target-network-frequency 500 --learning-rate 2.5e-4 --seed 1".split(),
        100.0,
        20,
        300.0,
    ),
    # The learner fed by its in-process actor (--num-actors 0), which makes the run deterministic: with 2 actor
    # processes the data depends on timing, and a run whose last 20 episodes averaged 284 saved a model that scored 18
    # (the greedy policy had collapsed within its last episodes; torch, under a loaded suite). The multi-process
    # plumbing has its own tests (tests/test_parity_qrdqn_actor_learner.py). At 30k steps, seeds 1-3, the last 20
    # averaged 214 / 273 / 247 (MLX) and 273 / 314 / 295 (torch); the saved models evaluated to 497 / 415 / 500 and
    # 188 / 500 / 115.
    "qrdqn_actor_learner": ("--env-id CartPole-v1 --total-timesteps 30000 --num-actors 0 --seed 1".split(), 150.0, 20, 100.0),
    # C51 on CartPole climbs and then oscillates, so its final window gets a lower bar: CleanRL's hyperparameters,
    # learning from step 1000, and a buffer that keeps the whole run (with the default 10k, torch's seed 1 fell
    # from a 20-episode mean of 293 to 84 between 120k and 130k steps). At 50k, seeds 1-3: the last 20 averaged
    # 238 / 331 / 226 (MLX, with its fused softmax) and 153 / 227 / 162 (torch); the saved models evaluated to
    # 329 / 304 / 204 (MLX) and 166 / 145 / 168 (torch).
    "c51": (
        "--env-id CartPole-v1 --total-timesteps 50000 --learning-starts 1000 --buffer-size 50000 --seed 1".split(),
        100.0,
        20,
        100.0,
    ),
}


# CI runs each pair's learning test in MLX (883 s of worker time in a full run of b8aba09 on the 2-core VM) but
# FULL_ONLY's; the torch twins' runs and FULL_ONLY's (~3,300 s more in earlier full runs) carry the `full_learning`
# mark and run with --full-learning, before a change to a script lands (CONTRIBUTING.md). In CI a torch twin is held to
# its MLX script by the parity tests (same weights and batch: same loss, gradients and update), by
# tests/test_twin_fidelity.py (the loop is the same text but for framework lines) and by its smoke and resume runs;
# its learning at CleanRL's budgets is in benchmark/results/cleanrl-budgets. qrdqn_actor_learner's learner, fed by its
# in-process actor, runs qrdqn's algorithm, which learns in CI; its actors' plumbing has its own tests
# (tests/test_parity_qrdqn_actor_learner.py).
FULL_ONLY = {"ppo_atari", "dqn_atari", "qrdqn_actor_learner"}
CASES = [
    pytest.param(name, fw, marks=[pytest.mark.full_learning] if fw == "torch" or name in FULL_ONLY else [])
    for name in LEARNING
    for fw in ("mlx", "torch")
]


@pytest.mark.learning
@pytest.mark.parametrize("name,framework", CASES)
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
