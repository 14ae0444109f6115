"""ddpg_mlx vs ddpg_torch: same weights and batch give the same actor output, target, critic and actor
losses and gradients, and polyak update; saved weights load across twins."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import assert_close, continuous_batch, load_script, torch_params_to_mlx

D_MLX = load_script("ddpg", "mlx")
D_TORCH = load_script("ddpg", "torch")
OBS_DIM, ACT_DIM, B = 5, 2, 64
LOW, HIGH = np.array([-1.0, 0.0], dtype=np.float32), np.array([1.0, 4.0], dtype=np.float32)


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t = {"actor": D_TORCH.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf": D_TORCH.QNetwork(OBS_DIM, ACT_DIM)}
    t |= {"target_actor": D_TORCH.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf_target": D_TORCH.QNetwork(OBS_DIM, ACT_DIM)}
    m = {
        k: getattr(D_MLX, type(v).__name__)(OBS_DIM, ACT_DIM, *((LOW, HIGH) if k.endswith("actor") else ())) for k, v in t.items()
    }
    for k in t:
        torch_params_to_mlx(t[k], m[k])
    return t, m


def make_batch(seed=1):
    return continuous_batch(seed, B, OBS_DIM, ACT_DIM, LOW, HIGH)[0]


def test_parameter_names_match(twins):
    t, m = twins
    for k in t:
        assert sorted(k for k, _ in tree_flatten(m[k].parameters())) == sorted(t[k].state_dict())


def test_target_losses_and_gradients(twins):
    t, m = twins
    b = make_batch()
    T = {k: torch.tensor(v) for k, v in b.items()}
    M = {k: mx.array(v) for k, v in b.items()}
    assert_close(m["actor"](M["obs"]), t["actor"](T["obs"]).detach(), what="actor")
    t_y = D_TORCH.ddpg_target(t["target_actor"], t["qf_target"], T["next_obs"], T["rewards"], T["dones"], 0.99)
    m_y = D_MLX.ddpg_target(m["target_actor"], m["qf_target"], M["next_obs"], M["rewards"], M["dones"], 0.99)
    assert_close(m_y, t_y, what="ddpg target")
    with torch.no_grad():
        ref = T["rewards"] + (1 - T["dones"]) * 0.99 * t["qf_target"](T["next_obs"], t["target_actor"](T["next_obs"]))
    assert_close(m_y, ref, what="ddpg target vs formula")

    t_loss, t_values = D_TORCH.critic_loss(t["qf"], T["obs"], T["actions"], t_y)
    t_loss.backward()
    (m_loss, m_values), m_grads = D_MLX.nn.value_and_grad(m["qf"], lambda *x: D_MLX.critic_loss(m["qf"], *x))(
        M["obs"], M["actions"], m_y
    )
    assert_close(m_loss, t_loss, atol=1e-4, what="qf1_loss")
    assert_close(m_values, t_values.detach(), what="qf1_values")
    m_grads = dict(tree_flatten(m_grads))
    for name, p in t["qf"].named_parameters():
        assert_close(m_grads[name], p.grad, atol=1e-5, rtol=1e-4, what=f"critic grad {name}")

    t_aloss = D_TORCH.actor_loss_fn(t["actor"], t["qf"], T["obs"])
    t_aloss.backward()
    m_aloss, m_agrads = D_MLX.nn.value_and_grad(m["actor"], lambda x: D_MLX.actor_loss_fn(m["actor"], m["qf"], x))(M["obs"])
    assert_close(m_aloss, t_aloss, what="actor_loss")
    m_agrads = dict(tree_flatten(m_agrads))
    assert sorted(m_agrads) == sorted(n for n, _ in t["actor"].named_parameters())
    for name, p in t["actor"].named_parameters():
        assert_close(m_agrads[name], p.grad, atol=1e-5, rtol=1e-4, what=f"actor grad {name}")


def test_polyak_update(twins):
    t, m = twins
    D_TORCH.polyak(t["qf_target"], t["qf"], 0.005)
    m["qf_target"].update(D_MLX.polyak(m["qf_target"].parameters(), m["qf"].parameters(), 0.005))
    params = dict(tree_flatten(m["qf_target"].parameters()))
    for name, p in t["qf_target"].state_dict().items():
        assert_close(params[name], p, atol=1e-6, what=f"qf_target.{name}")
