"""c51_mlx vs c51_torch: same weights and replay batch give the same pmfs, categorical projection,
loss and gradients; the projection also equals a plain per-atom loop. The scripts' own update
(train_step with their optimizers, then the target update) leaves the same weights in both twins, and
matches Adam's and Polyak's formulas."""

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

C_MLX = load_script("c51", "mlx")
C_TORCH = load_script("c51", "torch")
OBS_DIM, N_ACTIONS, B, GAMMA = 4, 3, 128, 0.99
N_ATOMS, V_MIN, V_MAX = 41, -10.0, 10.0  # narrow (rewards hit both edges), delta_z = 0.5 exactly


@pytest.fixture
def twins():
    torch.manual_seed(0)
    kw = dict(n_atoms=N_ATOMS, v_min=V_MIN, v_max=V_MAX)
    t_q, t_target = C_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **kw), C_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **kw)
    with torch.no_grad():  # sharper distributions than the default init gives
        t_q.network[4].weight.mul_(20)
        t_target.network[4].weight.mul_(20)
    m_q, m_target = C_MLX.QNetwork(OBS_DIM, N_ACTIONS, **kw), C_MLX.QNetwork(OBS_DIM, N_ACTIONS, **kw)
    torch_params_to_mlx(t_q, m_q)
    torch_params_to_mlx(t_target, m_target)
    return t_q, t_target, m_q, m_target


def batch_with_edges(seed):
    """A replay batch whose rewards also hit v_max/v_min and land exactly on atoms (b integer)."""
    obs, actions, rewards, next_obs, dones = replay_batch(seed, B, OBS_DIM, N_ACTIONS)
    rewards = 4 * rewards
    rewards[:4] = [30.0, -30.0, 0.0, 2.0]  # clipped high, clipped low, exact atoms (with done)
    dones[:4] = [0.0, 0.0, 1.0, 1.0]
    return obs, actions, rewards, next_obs, dones


def reference_projection(next_pmfs, rewards, dones, atoms, gamma, v_min, v_max):
    """The projection of Bellemare et al. (2017, Algorithm 1) as plain loops over samples and atoms."""
    n_atoms = len(atoms)
    delta_z = (v_max - v_min) / (n_atoms - 1)
    out = np.zeros_like(next_pmfs, dtype=np.float64)
    for i in range(len(rewards)):
        for j in range(n_atoms):
            tz = min(max(rewards[i] + (1 - dones[i]) * gamma * atoms[j], v_min), v_max)
            b = (tz - v_min) / delta_z
            lo, up = int(np.floor(b)), int(np.ceil(b))
            if lo == up:
                out[i, lo] += next_pmfs[i, j]
            else:
                out[i, lo] += next_pmfs[i, j] * (up - b)
                out[i, up] += next_pmfs[i, j] * (b - lo)
    return out


def test_network_parameter_names_match(twins):
    t_q, _, m_q, _ = twins
    assert sorted(k for k, _ in tree_flatten(m_q.parameters())) == sorted(t_q.state_dict())
    assert "atoms" not in dict(tree_flatten(m_q.trainable_parameters())), "atoms must not be trained"


def test_get_action_pmfs(twins):
    t_q, _, m_q, _ = twins
    obs, actions, *_ = replay_batch(1, B, OBS_DIM, N_ACTIONS)
    t_a, t_pmf = t_q.get_action(torch.tensor(obs))
    m_a, m_pmf = m_q.get_action(mx.array(obs))
    assert_close(m_a, t_a, what="greedy action")
    assert_close(m_pmf, t_pmf, atol=1e-6, what="greedy pmfs")
    assert len(np.unique(np.array(m_a))) > 1
    _, t_pmf = t_q.get_action(torch.tensor(obs), torch.tensor(actions))
    _, m_pmf = m_q.get_action(mx.array(obs), mx.array(actions))
    assert_close(m_pmf, t_pmf, atol=1e-6, what="pmfs of given actions")


def test_projection_matches_twin_and_reference(twins):
    _, t_target, _, m_target = twins
    obs, actions, rewards, next_obs, dones = batch_with_edges(2)
    _, t_next_pmfs = t_target.get_action(torch.tensor(next_obs))
    _, m_next_pmfs = m_target.get_action(mx.array(next_obs))
    t_proj = C_TORCH.categorical_projection(
        t_next_pmfs.detach(), torch.tensor(rewards), torch.tensor(dones), t_target.atoms, GAMMA, V_MIN, V_MAX
    )
    m_proj = C_MLX.categorical_projection(m_next_pmfs, mx.array(rewards), mx.array(dones), m_target.atoms, GAMMA, V_MIN, V_MAX)
    assert_close(m_proj, t_proj, atol=1e-6, what="projection (twins)")
    ref = reference_projection(
        t_next_pmfs.detach().numpy(), rewards, dones, np.linspace(V_MIN, V_MAX, N_ATOMS), GAMMA, V_MIN, V_MAX
    )
    np.testing.assert_allclose(np.array(m_proj), ref, atol=1e-5)
    np.testing.assert_allclose(np.array(m_proj).sum(1), 1.0, atol=1e-5)  # mass is conserved
    m_proj = np.array(m_proj)
    assert m_proj[0, -1] == pytest.approx(1.0, abs=1e-5) and m_proj[1, 0] == pytest.approx(1.0, abs=1e-5)
    assert m_proj[2, N_ATOMS // 2] == pytest.approx(1.0, abs=1e-6)  # reward 0 at a terminal: the 0 atom


def test_loss_and_gradients(twins):
    t_q, t_target, m_q, m_target = twins
    obs, actions, rewards, next_obs, dones = batch_with_edges(3)
    _, t_next = t_target.get_action(torch.tensor(next_obs))
    t_proj = C_TORCH.categorical_projection(
        t_next.detach(), torch.tensor(rewards), torch.tensor(dones), t_target.atoms, GAMMA, V_MIN, V_MAX
    )
    t_loss, t_old = C_TORCH.c51_loss(t_q, torch.tensor(obs), torch.tensor(actions), t_proj)
    t_q.zero_grad()
    t_loss.backward()
    m_proj = mx.array(t_proj.numpy())

    def loss_fn(o, a, p):
        return C_MLX.c51_loss(m_q, o, a, p)

    (m_loss, m_old), m_grads = nn.value_and_grad(m_q, loss_fn)(mx.array(obs), mx.array(actions), m_proj)
    assert_close(m_old, t_old, atol=1e-6, what="old pmfs")
    assert_close(m_loss, t_loss, what="loss")
    assert_same_grads(m_grads, t_q)


def test_full_update_matches_twin_and_formulas(twins):
    """Three train_steps as each script runs them (MLX compiled, the scripts' own optimizers and default
    Args), then the target update (the loop copies outright, tau = 1; here tau = 0.3 so the formula can
    fail): same weights and stats in both twins. The first step is Adam's (lr 2.5e-4, eps 0.01 / 128) by
    formula; the target update is Polyak's and leaves `atoms` alone."""
    assert C_MLX.Args().batch_size == B
    hyper = dict(gamma=C_MLX.Args().gamma, v_min=V_MIN, v_max=V_MAX)  # the fixture's atoms
    check_value_full_updates(
        C_MLX, C_TORCH, twins, batch_with_edges, ("loss", "mean Q(s, a)"), lr=2.5e-4, eps=0.01 / 128, **hyper
    )
    np.testing.assert_allclose(np.array(twins[3].atoms), np.linspace(V_MIN, V_MAX, N_ATOMS), atol=1e-6)


def test_weights_load_across_frameworks(twins, tmp_path):
    t_q, _, m_q, _ = twins
    kw = dict(n_atoms=N_ATOMS, v_min=V_MIN, v_max=V_MAX)
    fresh_m, fresh_t = cross_load(
        m_q, t_q, C_MLX.QNetwork(OBS_DIM, N_ACTIONS, **kw), C_TORCH.QNetwork(OBS_DIM, N_ACTIONS, **kw), tmp_path
    )  # strict: includes the `atoms` buffer
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m.get_action(mx.array(x))[1], fresh_t.get_action(torch.tensor(x))[1], atol=1e-6)
