"""dqn_mlx vs dqn_torch: same weights and replay batch give the same Q-values, TD targets, loss and
gradients; the scripts' own update (train_step with their optimizers, then the target update) leaves
the same weights in both twins, and matches Adam's and Polyak's formulas. Also the replay buffer both
twins use: true final observation on truncation, terminations (not truncations) as dones, vectorised
sampling."""

from functools import partial

import gymnasium as gym
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_same_grads,
    check_value_full_updates,
    cross_load,
    load_script,
    replay_batch,
    torch_params_to_mlx,
)

D_MLX = load_script("dqn", "mlx")
D_TORCH = load_script("dqn", "torch")
OBS_DIM, N_ACTIONS, B, GAMMA = 4, 3, 128, 0.99


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_q, t_target = D_TORCH.QNetwork(OBS_DIM, N_ACTIONS), D_TORCH.QNetwork(OBS_DIM, N_ACTIONS)
    m_q, m_target = D_MLX.QNetwork(OBS_DIM, N_ACTIONS), D_MLX.QNetwork(OBS_DIM, N_ACTIONS)
    torch_params_to_mlx(t_q, m_q)
    torch_params_to_mlx(t_target, m_target)
    return t_q, t_target, m_q, m_target


def as_torch(batch):
    return [torch.as_tensor(x) for x in batch]


def as_mlx(batch):
    return [mx.array(x) for x in batch]


def test_network_parameter_names_match(twins):
    t_q, _, m_q, _ = twins
    assert sorted(k for k, _ in tree_flatten(m_q.parameters())) == sorted(t_q.state_dict())


def test_td_target_loss_and_gradients(twins):
    t_q, t_target, m_q, m_target = twins
    batch = replay_batch(1, B, OBS_DIM, N_ACTIONS)
    t_obs, t_act, t_rew, t_next, t_done = as_torch(batch)
    m_obs, m_act, m_rew, m_next, m_done = as_mlx(batch)
    assert_close(m_q(m_obs), t_q(t_obs), what="Q-values")

    t_tgt = D_TORCH.td_target(t_target, t_next, t_rew, t_done, GAMMA)
    m_tgt = D_MLX.td_target(m_target, m_next, m_rew, m_done, GAMMA)
    assert_close(m_tgt, t_tgt, what="TD target")
    # independent form: terminal transitions are just the reward
    q_next = t_target(t_next).detach().numpy()
    expected = batch[2] + GAMMA * q_next.max(1) * (1 - batch[4])
    np.testing.assert_allclose(np.array(m_tgt), expected, atol=1e-5)
    assert batch[4].sum() > 0 and np.allclose(np.array(m_tgt)[batch[4] == 1], batch[2][batch[4] == 1])

    t_loss, t_old = D_TORCH.dqn_loss(t_q, t_obs, t_act, t_tgt)
    t_q.zero_grad()
    t_loss.backward()
    (m_loss, m_old), m_grads = nn.value_and_grad(m_q, lambda *a: D_MLX.dqn_loss(m_q, *a))(m_obs, m_act, m_tgt)
    assert_close(m_old, t_old, what="Q(s, a)")
    assert_close(m_loss, t_loss, what="loss")
    assert_same_grads(m_grads, t_q)


def test_full_update_matches_twin_and_formulas(twins):
    """Three train_steps as each script runs them (MLX compiled, the scripts' own optimizers and default
    Args), then the target update, which CleanRL runs on its own schedule: same weights and stats in
    both twins. The first step is Adam's (lr 2.5e-4, eps 1e-8) by formula; the target update is Polyak's."""
    batch_of = partial(replay_batch, batch_size=B, obs_dim=OBS_DIM, n_actions=N_ACTIONS)
    check_value_full_updates(
        D_MLX, D_TORCH, twins, batch_of, ("loss", "mean Q(s, a)"), lr=2.5e-4, eps=1e-8, gamma=D_MLX.Args().gamma
    )


def test_linear_schedule():
    for module in (D_MLX, D_TORCH):
        assert module.linear_schedule(1.0, 0.05, 100, 0) == 1.0
        assert module.linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
        assert module.linear_schedule(1.0, 0.05, 100, 100) == pytest.approx(0.05)
        assert module.linear_schedule(1.0, 0.05, 100, 1000) == 0.05


# ---- replay buffer (both twins define the same one) ----


def collect(module, env_kwargs, action, n_steps, buffer_size=64):
    """Run CartPole with SAME_STEP autoreset as the scripts do; store every transition."""
    envs = gym.vector.SyncVectorEnv(
        [lambda: gym.wrappers.RecordEpisodeStatistics(gym.make("CartPole-v1", **env_kwargs))],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rb = module.ReplayBuffer(buffer_size, envs.single_observation_space.shape)
    obs, _ = envs.reset(seed=0)
    log = []
    for _ in range(n_steps):
        actions = np.array([action])
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        rb.add(obs, module.real_next_obs(next_obs, infos), actions, rewards, terminations)
        log.append((next_obs.copy(), terminations[0], truncations[0], infos.get("final_obs")))
        obs = next_obs
    envs.close()
    return rb, log


@pytest.mark.parametrize("module", [D_MLX, D_TORCH], ids=["mlx", "torch"])
def test_truncation_stores_true_final_obs_and_bootstraps(module):
    rb, log = collect(module, {"max_episode_steps": 5}, action=0, n_steps=12)
    truncated = [i for i, (_, term, trunc, _) in enumerate(log) if trunc]
    assert truncated == [4, 9]
    for i in truncated:
        next_obs, term, _, final_obs = log[i]
        assert not term
        np.testing.assert_array_equal(rb.next_observations[i], final_obs[0])
        assert not np.allclose(rb.next_observations[i], next_obs[0]), "stored the reset observation"
        assert rb.dones[i] == 0.0, "a truncation must still bootstrap"
        # the step after a truncation starts from the reset observation
        np.testing.assert_array_equal(rb.observations[i + 1], next_obs[0])
    others = [i for i in range(12) if i not in truncated]
    np.testing.assert_array_equal(rb.next_observations[others[:-1]], rb.observations[[i + 1 for i in others[:-1]]])


@pytest.mark.parametrize("module", [D_MLX, D_TORCH], ids=["mlx", "torch"])
def test_termination_is_stored_as_done(module):
    rb, log = collect(module, {}, action=1, n_steps=30)  # pushing right always: the pole falls
    terminated = [i for i, (_, term, _, _) in enumerate(log) if term]
    assert terminated, "expected a termination"
    np.testing.assert_array_equal(np.flatnonzero(rb.dones[:30]), terminated)
    for i in terminated:
        np.testing.assert_array_equal(rb.next_observations[i], log[i][3][0])


@pytest.mark.parametrize("module", [D_MLX, D_TORCH], ids=["mlx", "torch"])
def test_ring_buffer_and_vectorised_sampling(module):
    rb = module.ReplayBuffer(10, (2,))
    for t in range(13):  # wraps around: holds transitions 3..12
        obs = np.full((1, 2), t, dtype=np.float32)
        rb.add(obs, obs + 0.5, np.array([t % 3]), np.array([float(t)]), np.array([t % 2 == 0]))
    assert rb.size == 10 and rb.pos == 3
    assert sorted(rb.rewards) == list(range(3, 13))
    np.random.seed(7)
    obs, actions, rewards, next_obs, dones = rb.sample(256)
    np.random.seed(7)
    idx = np.random.randint(0, 10, size=256)  # the scripts draw one index vector from numpy's global RNG
    np.testing.assert_array_equal(rewards, rb.rewards[idx])
    assert obs.shape == (256, 2) and actions.shape == rewards.shape == dones.shape == (256,)
    # the fields of one sampled row belong to one transition
    np.testing.assert_array_equal(obs[:, 0], rewards)
    np.testing.assert_array_equal(next_obs[:, 0], rewards + 0.5)
    np.testing.assert_array_equal(actions, rewards.astype(int) % 3)
    np.testing.assert_array_equal(dones, (rewards.astype(int) % 2 == 0).astype(np.float32))


def test_twins_sample_the_same_batches():
    buffers = [D_MLX.ReplayBuffer(50, (4,)), D_TORCH.ReplayBuffer(50, (4,))]
    rng = np.random.default_rng(0)
    for _ in range(30):
        tr = (rng.normal(size=(1, 4)), rng.normal(size=(1, 4)), rng.integers(0, 2, 1), rng.normal(size=1), rng.random(1) < 0.1)
        for rb in buffers:
            rb.add(*tr)
    samples = []
    for rb in buffers:
        np.random.seed(3)
        samples.append(rb.sample(16))
    for a, b in zip(*samples):
        np.testing.assert_array_equal(a, b)


def test_weights_load_across_frameworks(twins, tmp_path):
    t_q, _, m_q, _ = twins
    fresh_m, fresh_t = cross_load(m_q, t_q, D_MLX.QNetwork(OBS_DIM, N_ACTIONS), D_TORCH.QNetwork(OBS_DIM, N_ACTIONS), tmp_path)
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m(mx.array(x)), fresh_t(torch.tensor(x)))
