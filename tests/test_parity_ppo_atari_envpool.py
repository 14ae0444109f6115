"""ppo_atari_envpool_mlx vs ppo_atari_envpool_torch: the space-to-depth convolution equals torch's strided one; with the
same weights the Nature-CNN agent gives the same logits, values, loss terms and gradients; one full update (the scripts'
own train_step and optimizer) leaves the same weights, and the torch one is CleanRL's clipped first Adam step. The
episode statistics (CleanRL's wrapper for envpool) against a game worked out by hand, lives and a time limit included,
and on envpool's Breakout against the score the game itself keeps in its RAM. Without envpool the script says what to
install, in one line."""

import subprocess
import sys
from functools import partial

import gymnasium as gym
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    REPO,
    assert_close,
    assert_first_adam_step,
    assert_same_grads,
    assert_same_weights,
    cross_load,
    load_script,
    script_command,
    torch_params,
    torch_params_to_mlx,
)

P_MLX = load_script("ppo_atari_envpool", "mlx")
P_TORCH = load_script("ppo_atari_envpool", "torch")
MODULES = pytest.mark.parametrize("module", [P_MLX, P_TORCH], ids=["mlx", "torch"])
N_ACTIONS, B = 4, 32
KEYS = ("obs", "actions", "logprobs", "advantages", "returns", "values")
STATS = ("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac")


@pytest.mark.parametrize("cin,cout,k,s", [(4, 32, 8, 4), (32, 64, 4, 2), (64, 64, 3, 1)])
def test_space_to_depth_conv_equals_torch_conv(cin, cout, k, s):
    """The Nature CNN's three layers, forward and all gradients, against torch.nn.Conv2d with the same weights."""
    h = {8: 84, 4: 20, 3: 9}[k]
    rng = np.random.default_rng(k)
    x = rng.normal(size=(2, cin, h, h)).astype(np.float32)
    ours, t_conv = P_MLX.Conv2d(cin, cout, k, stride=s), torch.nn.Conv2d(cin, cout, k, stride=s)
    with torch.no_grad():
        t_conv.weight.copy_(torch.tensor(np.array(ours.weight)))
        t_conv.bias.copy_(torch.tensor(np.array(ours.bias)))
    t_x = torch.tensor(x, requires_grad=True)
    t_out = t_conv(t_x)
    cot = rng.normal(size=t_out.shape).astype(np.float32)  # a random upstream gradient
    (t_out * torch.tensor(cot)).sum().backward()
    x_nhwc, cot_nhwc = mx.array(x.transpose(0, 2, 3, 1)), mx.array(cot.transpose(0, 2, 3, 1))

    def loss(x):
        return (ours(x) * cot_nhwc).sum()

    _, grads = nn.value_and_grad(ours, loss)(x_nhwc)
    assert_close(ours(x_nhwc).transpose(0, 3, 1, 2), t_out, what="forward")
    assert_close(mx.grad(loss)(x_nhwc).transpose(0, 3, 1, 2), t_x.grad, what="input grad")
    assert_close(grads["weight"], t_conv.weight.grad, atol=1e-4, what="weight grad")
    assert_close(grads["bias"], t_conv.bias.grad, atol=1e-4, what="bias grad")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(N_ACTIONS)
    m_agent = P_MLX.Agent(N_ACTIONS)
    with torch.no_grad():  # a policy head far from uniform, so the clipped branches are exercised
        t_agent.actor.weight.normal_(0, 0.05)
    torch_params_to_mlx(t_agent, m_agent)  # same names and shapes: no layout conversion at all
    return t_agent, m_agent


def make_batch(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.integers(0, 256, size=(B, 4, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, N_ACTIONS, size=B),
        "logprobs": (np.log(1 / N_ACTIONS) + 0.3 * rng.normal(size=B)).astype(np.float32),
        "advantages": rng.normal(size=B).astype(np.float32),
        "returns": rng.normal(size=B).astype(np.float32),
        "values": rng.normal(size=B).astype(np.float32),
    }


def test_parameter_names_shapes_logits_and_values(twins):
    t_agent, m_agent = twins
    m_params = {k: v.shape for k, v in tree_flatten(m_agent.parameters())}
    assert m_params == {k: tuple(v.shape) for k, v in t_agent.state_dict().items()}
    obs = make_batch()["obs"]
    t_logits, t_value = t_agent.get_logits_and_value(torch.tensor(obs))
    m_logits, m_value = m_agent.get_logits_and_value(mx.array(obs))
    assert m_logits.shape == (B, N_ACTIONS) and m_value.shape == (B,)
    assert_close(m_logits, t_logits, what="logits")
    assert_close(m_value, t_value, what="value")


@pytest.mark.parametrize("norm_adv,clip_vloss", [(True, True), (False, False)])
def test_loss_terms_and_gradients(twins, norm_adv, clip_vloss):
    t_agent, m_agent = twins
    b = make_batch()
    coefs = dict(clip_coef=0.1, ent_coef=0.01, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=clip_vloss)
    t_loss, t_stats = P_TORCH.ppo_loss(t_agent, *(torch.tensor(b[k]) for k in KEYS), **coefs)
    t_agent.zero_grad()
    t_loss.backward()
    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, lambda *batch: P_MLX.ppo_loss(m_agent, *batch, **coefs))(
        *(mx.array(b[k]) for k in KEYS)
    )
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    assert float(t_stats[5]) > 0, "the batch should exercise the clipped branch"
    assert_same_grads(m_grads, t_agent)


def test_one_full_update(twins):
    """train_step (loss, gradients, clipping to max_grad_norm, Adam) on one minibatch, with each script's own
    make_optimizer and default Args (CleanRL's): the same weights and loss terms come out of both twins (MLX compiled,
    as the script runs it), and the torch step is a first Adam step with lr 2.5e-4, eps 1e-5 on gradients of norm 0.5."""
    t_agent, m_agent = twins
    m_args, t_args = P_MLX.Args(), P_TORCH.Args()
    hyper = {k: getattr(t_args, k) for k in ("clip_coef", "ent_coef", "vf_coef", "norm_adv", "clip_vloss", "max_grad_norm")}
    assert hyper == {k: getattr(m_args, k) for k in hyper}
    b = {k: np.concatenate([v, w]) for (k, v), w in zip(make_batch(1).items(), make_batch(2).values())}  # a batch of 2B
    mb_inds = np.random.default_rng(0).permutation(2 * B)[:B]
    m_opt, t_opt = P_MLX.make_optimizer(m_agent, m_args), P_TORCH.make_optimizer(t_agent, t_args)

    before = torch_params(t_agent)
    t_stats = P_TORCH.train_step(t_agent, t_opt, torch.tensor(mb_inds), [torch.tensor(b[k]) for k in KEYS], **hyper)
    grads = {name: p.grad.numpy().copy() for name, p in t_agent.named_parameters()}
    state = [m_agent.state, m_opt.state]
    train = mx.compile(partial(P_MLX.train_step, m_agent, m_opt, **hyper), inputs=state, outputs=state)
    m_stats = train(mx.array(mb_inds), [mx.array(b[k]) for k in KEYS])
    mx.eval(m_stats, m_agent.state, m_opt.state)

    assert_same_weights(m_agent, t_agent, atol=1e-5, what="after one update")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert abs(norm - 0.5) < 1e-4, f"the gradients were clipped to a global norm of {norm}, not 0.5"
    assert_first_adam_step(before, torch_params(t_agent), grads, lr=2.5e-4, eps=1e-5)


def test_weights_round_trip_both_ways(twins, tmp_path):
    t_agent, m_agent = twins
    obs = make_batch(seed=5)["obs"]
    fresh_m, fresh_t = cross_load(m_agent, t_agent, P_MLX.Agent(N_ACTIONS), P_TORCH.Agent(N_ACTIONS), tmp_path)
    assert_close(m_agent.get_logits(mx.array(obs)), fresh_t.get_logits(torch.tensor(obs)), what="torch <- mlx file")
    assert_close(fresh_m.get_logits(mx.array(obs)), t_agent.get_logits(torch.tensor(obs)), what="mlx <- torch file")


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
