"""dqn_atari_mlx vs dqn_atari_torch: with the same weights (torch's layout, loaded untouched by both)
the Nature-CNN Q-network gives the same Q-values on uint8 frames, TD targets, loss and gradients; one
full update (the scripts' own train_step and optimizer) leaves the same weights, and the torch one is
CleanRL's first Adam step; polyak_update follows its formula in both; saved files load across
frameworks."""

from functools import partial

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_same_grads,
    assert_same_weights,
    check_polyak_update,
    cross_load,
    load_script,
    torch_params,
    torch_params_to_mlx,
)

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


def test_td_target_loss_and_gradients(twins):
    t_net, m_net = twins
    torch.manual_seed(1)
    t_target = D_TORCH.QNetwork(N_ACTIONS)
    m_target = D_MLX.QNetwork(N_ACTIONS)
    torch_params_to_mlx(t_target, m_target)
    obs, actions, rewards, next_obs, dones = make_batch(seed=10)
    t_tgt = D_TORCH.td_target(t_target, torch.tensor(next_obs), torch.tensor(rewards), torch.tensor(dones), 0.99)
    m_tgt = D_MLX.td_target(m_target, mx.array(next_obs), mx.array(rewards), mx.array(dones), 0.99)
    assert_close(m_tgt, t_tgt, what="TD target")
    t_loss, t_old = D_TORCH.dqn_loss(t_net, torch.tensor(obs), torch.tensor(actions).long(), t_tgt)
    t_loss.backward()
    (m_loss, m_old), m_grads = nn.value_and_grad(m_net, lambda *a: D_MLX.dqn_loss(m_net, *a))(
        mx.array(obs), mx.array(actions), m_tgt
    )
    assert_close(m_loss, t_loss, what="TD loss")
    assert_close(m_old, t_old, what="Q(s, a)")
    assert_same_grads(m_grads, t_net)


def test_one_full_update(twins):
    """train_step (TD target from the target network, loss, gradients, Adam) with each script's own
    make_optimizer and default Args: the same Q-network weights, loss and mean Q come out of both twins
    (MLX compiled, as the script runs it), and the target network is untouched. Against the formula: the
    torch step is a first Adam step with CleanRL's learning rate 1e-4 and torch's default eps 1e-8."""
    t_net, m_net = twins
    torch.manual_seed(1)
    t_target = D_TORCH.QNetwork(N_ACTIONS)
    m_target = D_MLX.QNetwork(N_ACTIONS)
    torch_params_to_mlx(t_target, m_target)
    m_args, t_args = D_MLX.Args(), D_TORCH.Args()
    assert m_args.gamma == t_args.gamma
    m_opt, t_opt = D_MLX.make_optimizer(m_net, m_args), D_TORCH.make_optimizer(t_net, t_args)
    batch = make_batch(seed=11)

    before, target_before = torch_params(t_net), torch_params(t_target)
    t_loss, t_q = D_TORCH.train_step(t_net, t_target, t_opt, *map(torch.tensor, batch), gamma=t_args.gamma)
    grads = {name: p.grad.numpy().copy() for name, p in t_net.named_parameters()}
    state = [m_net.state, m_target.state, m_opt.state]
    train = mx.compile(partial(D_MLX.train_step, m_net, m_target, m_opt, gamma=m_args.gamma), inputs=state, outputs=state)
    m_loss, m_q = train(*map(mx.array, batch))
    mx.eval(m_loss, m_q, m_net.state, m_opt.state)

    assert_same_weights(m_net, t_net, atol=1e-5, what="Q-network after one update")
    assert_same_weights(m_target, t_target, atol=0, what="target network")
    assert_close(m_loss, t_loss, what="TD loss")
    assert_close(m_q, t_q, what="mean Q(s, a)")
    for name, t in torch_params(t_target).items():
        np.testing.assert_array_equal(t, target_before[name], err_msg=f"the update moved the target's {name}")
    assert_first_adam_step(before, torch_params(t_net), grads, lr=1e-4, eps=1e-8)


def test_polyak_update_formula(twins):
    """polyak_update in both twins against target <- tau * online + (1 - tau) * target (tau = 0.3)."""
    t_net, m_net = twins
    check_polyak_update(D_TORCH, t_net, D_TORCH.QNetwork(N_ACTIONS))
    check_polyak_update(D_MLX, m_net, D_MLX.QNetwork(N_ACTIONS))


def test_weights_round_trip_both_ways(twins, tmp_path):
    t_net, m_net = twins
    obs = make_batch(seed=5)[0]
    fresh_m, fresh_t = cross_load(m_net, t_net, D_MLX.QNetwork(N_ACTIONS), D_TORCH.QNetwork(N_ACTIONS), tmp_path)
    assert_close(m_net(mx.array(obs)), fresh_t(torch.tensor(obs)), what="torch <- mlx file")
    assert_close(fresh_m(mx.array(obs)), t_net(torch.tensor(obs)), what="mlx <- torch file")


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_evaluation_uses_end_e(framework):
    """CleanRL's dqn_atari evaluates the saved model with epsilon = end_e (0.01), not evaluate's default."""
    import ast

    from tests.helpers import script_path

    tree = ast.parse(script_path("dqn_atari", framework).read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    calls = [n for n in ast.walk(main) if isinstance(n, ast.Call) and ast.unparse(n.func) == "evaluate"]
    assert len(calls) == 1
    assert {k.arg: ast.unparse(k.value) for k in calls[0].keywords}.get("epsilon") == "args.end_e"
