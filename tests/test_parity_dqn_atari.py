"""dqn_atari_mlx vs dqn_atari_torch: with the same weights (torch's layout, loaded untouched by both)
the Nature-CNN Q-network gives the same Q-values on uint8 frames, TD targets, loss, gradients and
Adam steps; the target update is a copy; saved files load across frameworks."""

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import assert_close, cross_load, load_script, torch_params_to_mlx

D_MLX = load_script("dqn_atari", "mlx")
D_TORCH = load_script("dqn_atari", "torch")
N_ACTIONS, B = 6, 32


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_net = D_TORCH.QNetwork(N_ACTIONS)
    m_net = D_MLX.QNetwork(N_ACTIONS)
    torch_params_to_mlx(t_net, m_net)
    return t_net, m_net


def make_batch(seed=1):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(B, 4, 84, 84), dtype=np.uint8),
        rng.integers(0, N_ACTIONS, size=B).astype(np.int32),
        rng.normal(size=B).astype(np.float32),
        rng.integers(0, 256, size=(B, 4, 84, 84), dtype=np.uint8),
        (rng.random(B) < 0.3).astype(np.float32),
    )


def test_parameter_names_and_shapes_match(twins):
    t_net, m_net = twins
    assert {k: v.shape for k, v in tree_flatten(m_net.parameters())} == {k: tuple(v.shape) for k, v in t_net.state_dict().items()}


def test_q_values_on_uint8_frames(twins):
    t_net, m_net = twins
    obs = make_batch()[0]
    q = m_net(mx.array(obs))
    assert q.shape == (B, N_ACTIONS)
    assert_close(q, t_net(torch.tensor(obs)), atol=1e-5, what="Q-values")


def test_td_target_loss_gradients_and_adam_steps(twins):
    """Three Adam steps. The MLX weights are re-synced to torch's before each step: Adam's normalised
    update turns float noise in near-zero gradients into differences of up to ~2% of the learning rate,
    which would otherwise flip ReLUs and compound; Adam's moments run on independently in each twin."""
    t_net, m_net = twins
    torch.manual_seed(1)
    t_target = D_TORCH.QNetwork(N_ACTIONS)
    m_target = D_MLX.QNetwork(N_ACTIONS)
    torch_params_to_mlx(t_target, m_target)
    t_opt = torch.optim.Adam(t_net.parameters(), lr=1e-4)
    m_opt = optim.Adam(learning_rate=1e-4, bias_correction=True)
    m_opt.init(m_net.trainable_parameters())
    loss_and_grad = nn.value_and_grad(m_net, lambda *a: D_MLX.dqn_loss(m_net, *a))
    for step in range(3):
        torch_params_to_mlx(t_net, m_net)
        obs, actions, rewards, next_obs, dones = make_batch(seed=10 + step)
        t_tgt = D_TORCH.td_target(t_target, torch.tensor(next_obs), torch.tensor(rewards), torch.tensor(dones), 0.99)
        m_tgt = D_MLX.td_target(m_target, mx.array(next_obs), mx.array(rewards), mx.array(dones), 0.99)
        assert_close(m_tgt, t_tgt, what="TD target")
        t_loss, t_old = D_TORCH.dqn_loss(t_net, torch.tensor(obs), torch.tensor(actions).long(), t_tgt)
        t_opt.zero_grad()
        t_loss.backward()
        (m_loss, m_old), m_grads = loss_and_grad(mx.array(obs), mx.array(actions), m_tgt)
        assert_close(m_loss, t_loss, what="TD loss")
        assert_close(m_old, t_old, what="Q(s, a)")
        flat_grads = dict(tree_flatten(m_grads))
        for name, p in t_net.named_parameters():
            assert_close(flat_grads[name], p.grad, atol=1e-5, what=f"grad {name} at step {step}")
        t_opt.step()
        m_opt.update(m_net, m_grads)
        m_params = dict(tree_flatten(m_net.parameters()))
        for name, p in t_net.named_parameters():
            assert_close(m_params[name], p, atol=1e-5, rtol=0, what=f"param {name} after Adam step {step}")


def test_hard_target_update_copies(twins):
    _, m_net = twins
    m_target = D_MLX.QNetwork(N_ACTIONS)
    m_target.update(D_MLX.polyak_update(m_net.trainable_parameters(), m_target.trainable_parameters(), 1.0))
    for (name, a), (_, b) in zip(tree_flatten(m_net.parameters()), tree_flatten(m_target.parameters())):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=name)


def test_weights_round_trip_both_ways(twins, tmp_path):
    t_net, m_net = twins
    obs = make_batch(seed=5)[0]
    fresh_m, fresh_t = cross_load(m_net, t_net, D_MLX.QNetwork(N_ACTIONS), D_TORCH.QNetwork(N_ACTIONS), tmp_path)
    assert_close(m_net(mx.array(obs)), fresh_t(torch.tensor(obs)), what="torch <- mlx file")
    assert_close(fresh_m(mx.array(obs)), t_net(torch.tensor(obs)), what="mlx <- torch file")
