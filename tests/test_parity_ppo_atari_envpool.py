"""ppo_atari_envpool_mlx vs ppo_atari_envpool_torch, what is its own (its agent, loss and update are ppo_atari's:
tests/test_parity_ppo_atari.py runs those checks on both pairs): CleanRL's defaults; the episode statistics (CleanRL's
wrapper for envpool) against a game worked out by hand, lives and a time limit included, and on envpool's Breakout against the score the game itself keeps in its RAM. Without envpool the script says what to
install, in one line."""

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from tests.helpers import REPO, load_script, script_command

P_MLX = load_script("ppo_atari_envpool", "mlx")
P_TORCH = load_script("ppo_atari_envpool", "torch")
MODULES = pytest.mark.parametrize("module", [P_MLX, P_TORCH], ids=["mlx", "torch"])
N_ACTIONS = 4


def test_cleanrls_defaults():
    """CleanRL's ppo_atari_envpool.py Args (vwxyzjn/cleanrl@fe8d8a0), less its W&B project name."""
    cleanrl = dict(env_id="Breakout-v5", total_timesteps=10_000_000, learning_rate=2.5e-4, num_envs=8, num_steps=128)
    cleanrl |= dict(anneal_lr=True, gamma=0.99, gae_lambda=0.95, num_minibatches=4, update_epochs=4, norm_adv=True)
    cleanrl |= dict(clip_coef=0.1, clip_vloss=True, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, target_kl=None, seed=1)
    for module in (P_MLX, P_TORCH):
        assert {k: getattr(module.Args(), k) for k in cleanrl} == cleanrl


class ScriptedEnvpool(gym.vector.VectorEnv):
    """Two envs that replay envpool's step outputs from a table: (raw reward, lives, game over, truncated) per env, with
    a life loss marked terminated as episodic_life does; the clipped reward is the sign of the raw one."""

    def __init__(self, steps):
        self.num_envs, self.steps, self.t = 2, steps, 0
        self.single_observation_space = self.observation_space = gym.spaces.Box(0, 255, (1,), np.uint8)
        self.single_action_space = self.action_space = gym.spaces.Discrete(4)

    def reset(self, **kwargs):
        self.lives = np.array([env[1] for env in self.steps[0]])
        return np.zeros((2, 1), np.uint8), {}

    def step(self, actions):
        raw, lives, game_over, truncated = (np.array(column) for column in zip(*self.steps[self.t]))
        self.t += 1
        lost_life = (0 < lives) & (lives < self.lives)
        self.lives = lives
        infos = {"reward": raw.astype(np.float32), "lives": lives, "terminated": game_over.astype(np.int32)}
        terminated = (lost_life | game_over.astype(bool)) & ~truncated
        return np.zeros((2, 1), np.uint8), np.sign(raw).astype(np.float32), terminated, truncated.astype(bool), infos


# Env 0 plays one game of 2 lives: rewards 4 and 7 in its first life (lost at step 2), the reset step (3), 1 more in the
# second life, game over at step 5 (return 12, 6 agent steps), then the reset step of its next game and 10 more. Env 1
# is cut by the time limit at step 1 with 2 points and 3 lives left (CleanRL's wrapper would neither log that game nor
# zero its sum, so its next game would start at 2), then scores 5 in its next game.
GAME = [  # per step: ((raw reward, lives, game over, truncated) of env 0, the same of env 1)
    ((4, 2, 0, 0), (2, 3, 0, 0)),
    ((0, 2, 0, 0), (0, 3, 0, 1)),
    ((7, 1, 0, 0), (0, 3, 0, 0)),
    ((0, 1, 0, 0), (5, 3, 0, 0)),
    ((1, 1, 0, 0), (0, 3, 0, 0)),
    ((0, 0, 1, 0), (0, 3, 0, 0)),
    ((0, 2, 0, 0), (0, 3, 0, 0)),
    ((10, 2, 0, 0), (0, 3, 0, 0)),
]
# per step: (infos["r"], infos["l"], the finished games logged, the terminated flags learning sees)
EXPECTED = [
    ([4, 2], [1, 1], [], [0, 0]),
    ([4, 2], [2, 2], [(2.0, 2)], [0, 0]),
    ([11, 0], [3, 1], [], [1, 0]),
    ([11, 5], [4, 2], [], [0, 0]),
    ([12, 5], [5, 3], [], [0, 0]),
    ([12, 5], [6, 4], [(12.0, 6)], [1, 0]),
    ([0, 5], [1, 5], [], [0, 0]),
    ([10, 5], [2, 6], [], [0, 0]),
]


@MODULES
def test_episode_statistics_sum_raw_rewards_over_lives(module):
    """A lost life ends an episode for learning (terminated) but logs nothing; the logged return is the raw score of the
    whole game and its length counts every agent step of it; both restart after a game over or a time limit."""
    envs = module.RecordEpisodeStatistics(ScriptedEnvpool(GAME))
    envs.reset()
    for t, (r, length, logged, terminated) in enumerate(EXPECTED):
        _, rewards, term, _, infos = envs.step(np.zeros(2, np.int64))
        assert infos["r"].tolist() == r and infos["l"].tolist() == length, f"step {t}: {infos['r']}, {infos['l']}"
        assert module.finished_episodes(infos) == logged, f"step {t}"
        assert term.astype(int).tolist() == terminated and set(rewards.tolist()) <= {0.0, 1.0}, f"step {t}"


@MODULES
def test_breakout_return_is_the_score_in_the_games_ram(module):
    """envpool's Breakout-v5 under a random policy: uint8 (n, 4, 84, 84) frames, a fresh game's stack repeats its first
    frame, rewards clipped to their sign. Each logged game ended after 4 lost lives (terminated, nothing logged); its
    return is the score the game keeps in RAM (BCD, bytes 0x4D and 0x4C, the ones ALE reads) and its length is envpool's
    own step counter plus one reset step per lost life (and one for the reset after the previous game)."""
    envs = module.make_env("Breakout-v5", 3, 2, False, "test")()
    obs, _ = envs.reset()
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8 and (obs[:, 0] == obs[:, 3]).all()
    rng, games, life_ends = np.random.default_rng(0), [0, 0], np.zeros(2, int)
    while min(games) < 2:
        obs, rewards, terminated, truncated, infos = envs.step(rng.integers(0, N_ACTIONS, size=2))
        assert set(np.unique(rewards)) <= {-1.0, 0.0, 1.0} and not truncated.any()
        ended = {i: (r, length) for i, (r, length) in zip(np.flatnonzero(infos["game_ended"]), module.finished_episodes(infos))}
        life_ends += terminated & ~infos["game_ended"]
        for i, (game_return, length) in ended.items():
            ram = infos["ram"][i].astype(int)
            assert game_return == (ram[0x4D] & 15) + 10 * (ram[0x4D] >> 4) + 100 * (ram[0x4C] & 15)
            assert life_ends[i] == 4, f"Breakout has 5 lives: {life_ends[i]} life-loss terminations before the game ended"
            assert length == infos["elapsed_step"][i] + 4 + (games[i] > 0)
            life_ends[i], games[i] = 0, games[i] + 1
    envs.close()


def test_without_envpool_the_script_says_what_to_install(tmp_path):
    """envpool hidden (as on a platform without its wheel): one line naming the package, no traceback, no run."""
    cmd, env = script_command("ppo_atari_envpool", "mlx")
    code = f"import runpy, sys; sys.modules['envpool'] = None; sys.argv = [{cmd[1]!r}]; runpy.run_path(sys.argv[0], run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("ppo_atari_envpool_mlx.py: needs envpool") and "pip install envpool==1.2.5" in line, line
    assert not (tmp_path / "runs").exists()
    assert "envpool==1.2.5;" in (REPO / "requirements-mlx.txt").read_text(), "the message names the pinned version"
