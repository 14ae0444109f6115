"""qrdqn_mlx vs qrdqn_torch: same weights and replay batch give the same quantiles, targets, quantile
Huber loss and gradients; the loss also equals a plain double loop over quantile pairs. The scripts' own
update (train_step with their optimizers, then the target update) leaves the same weights in both
twins, and matches Adam's and Polyak's formulas."""

from functools import partial

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

Q_MLX = load_script("qrdqn", "mlx")
Q_TORCH = load_script("qrdqn", "torch")
OBS_DIM, N_ACTIONS, N_QUANTILES, B, GAMMA = 4, 3, 10, 64, 0.99
NET = dict(n_quantiles=N_QUANTILES, net_arch=(32, 32))


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_q, t_target = Q_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **NET), Q_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **NET)
    with torch.no_grad():  # spread the quantiles so |delta| > 1 and < 1 both occur
        t_q.network[-1].weight.mul_(5)
        t_target.network[-1].weight.mul_(5)
    m_q, m_target = Q_MLX.QNetwork(OBS_DIM, N_ACTIONS, **NET), Q_MLX.QNetwork(OBS_DIM, N_ACTIONS, **NET)
    torch_params_to_mlx(t_q, m_q)
    torch_params_to_mlx(t_target, m_target)
    return t_q, t_target, m_q, m_target


def reference_quantile_huber_loss(current, target):
    """Dabney et al. (2018), kappa = 1, as plain loops: for each sample, sum over current quantiles i of
    the mean over target quantiles j of |tau_i - 1{u < 0}| * huber(u), u = target_j - current_i."""
    batch, n = current.shape
    total = 0.0
    for b in range(batch):
        for i in range(n):
            tau = (i + 0.5) / n
            acc = 0.0
            for j in range(target.shape[1]):
                u = float(target[b, j]) - float(current[b, i])
                huber = 0.5 * u * u if abs(u) <= 1 else abs(u) - 0.5
                acc += abs(tau - (1.0 if u < 0 else 0.0)) * huber
            total += acc / target.shape[1]
    return total / batch


def test_network_layout_and_names(twins):
    t_q, _, m_q, _ = twins
    assert sorted(k for k, _ in tree_flatten(m_q.parameters())) == sorted(t_q.state_dict())
    x = np.random.default_rng(0).normal(size=(7, OBS_DIM)).astype(np.float32)
    assert m_q(mx.array(x)).shape == (7, N_QUANTILES, N_ACTIONS)
    assert_close(m_q(mx.array(x)), t_q(torch.tensor(x)), what="quantiles")
    assert_close(m_q.get_action(mx.array(x)), t_q.get_action(torch.tensor(x)), what="greedy action")
    default = Q_MLX.QNetwork(OBS_DIM, N_ACTIONS)  # rl-zoo's CartPole net: 256-256, 10 quantiles
    assert [layer.weight.shape for layer in default.network[::2]] == [(256, OBS_DIM), (256, 256), (10 * N_ACTIONS, 256)]


def test_target_quantiles(twins):
    _, t_target, _, m_target = twins
    _, _, rewards, next_obs, dones = replay_batch(1, B, OBS_DIM, N_ACTIONS)
    t_tgt = Q_TORCH.qrdqn_target(t_target, torch.tensor(next_obs), torch.tensor(rewards), torch.tensor(dones), GAMMA)
    m_tgt = Q_MLX.qrdqn_target(m_target, mx.array(next_obs), mx.array(rewards), mx.array(dones), GAMMA)
    assert_close(m_tgt, t_tgt, what="target quantiles")
    # independent form: the greedy action maximises the mean of the target net's quantiles
    q = t_target(torch.tensor(next_obs)).detach().numpy()  # [B, N, A]
    greedy = q.mean(1).argmax(1)
    expected = rewards[:, None] + (1 - dones[:, None]) * GAMMA * q[np.arange(B), :, greedy]
    np.testing.assert_allclose(np.array(m_tgt), expected, atol=1e-5)
    assert len(np.unique(greedy)) > 1


def test_quantile_huber_loss_matches_twin_and_double_loop():
    rng = np.random.default_rng(2)
    current = (2 * rng.normal(size=(8, N_QUANTILES))).astype(np.float32)
    target = (2 * rng.normal(size=(8, N_QUANTILES))).astype(np.float32)
    m = Q_MLX.quantile_huber_loss(mx.array(current), mx.array(target))
    t = Q_TORCH.quantile_huber_loss(torch.tensor(current), torch.tensor(target))
    assert_close(m, t, what="twins")
    np.testing.assert_allclose(float(m), reference_quantile_huber_loss(current, target), rtol=1e-5)
    delta = np.abs(target[:, None, :] - current[:, :, None])
    assert (delta > 1).any() and (delta < 1).any(), "both Huber branches must be exercised"


def test_loss_and_gradients(twins):
    t_q, t_target, m_q, m_target = twins
    obs, actions, rewards, next_obs, dones = replay_batch(3, B, OBS_DIM, N_ACTIONS)
    t_tgt = Q_TORCH.qrdqn_target(t_target, torch.tensor(next_obs), torch.tensor(rewards), torch.tensor(dones), GAMMA)
    t_loss, t_cur = Q_TORCH.qrdqn_loss(t_q, torch.tensor(obs), torch.tensor(actions), t_tgt)
    t_q.zero_grad()
    t_loss.backward()
    m_tgt = Q_MLX.qrdqn_target(m_target, mx.array(next_obs), mx.array(rewards), mx.array(dones), GAMMA)

    def loss_fn(o, a, tgt):
        return Q_MLX.qrdqn_loss(m_q, o, a, tgt)

    (m_loss, m_cur), m_grads = nn.value_and_grad(m_q, loss_fn)(mx.array(obs), mx.array(actions), m_tgt)
    assert_close(m_cur, t_cur, what="current quantiles")
    assert_close(m_loss, t_loss, what="loss")
    np.testing.assert_allclose(float(m_loss), reference_quantile_huber_loss(t_cur.detach().numpy(), t_tgt.numpy()), rtol=1e-5)
    assert_same_grads(m_grads, t_q)


def test_full_update_matches_twin_and_formulas(twins):
    """Three train_steps as each script runs them (MLX compiled, the scripts' own optimizers and default
    Args), then the target update, which runs on its own schedule: same weights and stats in both twins.
    The first step is Adam's (sb3-contrib's lr 2.3e-3, eps 0.01 / 64) by formula; the target update is
    Polyak's."""
    assert Q_MLX.Args().batch_size == B
    batch_of = partial(replay_batch, batch_size=B, obs_dim=OBS_DIM, n_actions=N_ACTIONS)
    stats = ("loss", "mean quantile")
    check_value_full_updates(Q_MLX, Q_TORCH, twins, batch_of, stats, lr=2.3e-3, eps=0.01 / 64, gamma=Q_MLX.Args().gamma)


def test_weights_load_across_frameworks(twins, tmp_path):
    t_q, _, m_q, _ = twins
    fresh_m, fresh_t = cross_load(
        m_q, t_q, Q_MLX.QNetwork(OBS_DIM, N_ACTIONS, **NET), Q_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **NET), tmp_path
    )
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m(mx.array(x)), fresh_t(torch.tensor(x)))
