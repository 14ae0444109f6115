"""ppo_continuous_action_mlx vs ppo_continuous_action_torch: same weights and batch give the same Gaussian
log-probs, entropy, values, loss terms and gradients (actor_logstd included); one full update (train_step
with the scripts' own optimizer) leaves the same weights, and is Adam's first step; both use CleanRL's GAE;
saved weights load in either twin; evaluation restores the saved observation statistics and keeps them
frozen."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_same_grads,
    check_ppo_full_updates,
    cross_load,
    load_script,
    torch_params_to_mlx,
)

P_MLX = load_script("ppo_continuous_action", "mlx")
P_TORCH = load_script("ppo_continuous_action", "torch")
TWINS = {"mlx": P_MLX, "torch": P_TORCH}
OBS_DIM, ACTION_DIM, B = 5, 3, 64
STATS = ("pg_loss", "v_loss", "entropy", "old_approx_kl", "approx_kl", "clipfrac")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t_agent = P_TORCH.Agent(OBS_DIM, ACTION_DIM)
    m_agent = P_MLX.Agent(OBS_DIM, ACTION_DIM)
    # non-trivial mean head and a log-std that differs per dimension, so every term is exercised
    with torch.no_grad():
        t_agent.actor_mean[4].weight.normal_(0, 0.5)
        t_agent.actor_logstd.copy_(torch.tensor([[-0.5, 0.0, 0.3]]))
    torch_params_to_mlx(t_agent, m_agent)
    return t_agent, m_agent


def make_batch(seed=1, size=B):
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(size, OBS_DIM)).astype(np.float32),
        "actions": rng.normal(size=(size, ACTION_DIM)).astype(np.float32),
        "logprobs": (-3.0 + 0.5 * rng.normal(size=size)).astype(np.float32),
        "advantages": rng.normal(size=size).astype(np.float32),
        "returns": rng.normal(size=size).astype(np.float32),
        "values": rng.normal(size=size).astype(np.float32),
    }


KEYS = ("obs", "actions", "logprobs", "advantages", "returns", "values")


def as_torch(batch):
    return [torch.tensor(batch[k]) for k in KEYS]


def as_mlx(batch):
    return [mx.array(batch[k]) for k in KEYS]


def test_network_parameter_names_match(twins):
    t_agent, m_agent = twins
    m_names = sorted(k for k, _ in tree_flatten(m_agent.parameters()))
    assert m_names == sorted(t_agent.state_dict())
    assert "actor_logstd" in m_names


def test_logprob_entropy_value(twins):
    t_agent, m_agent = twins
    b = make_batch()
    t_obs, t_act = torch.tensor(b["obs"]), torch.tensor(b["actions"])
    m_obs, m_act = mx.array(b["obs"]), mx.array(b["actions"])
    t_lp, t_ent = P_TORCH.normal_logprob_entropy(t_agent.get_action_mean(t_obs), t_agent.actor_logstd, t_act)
    m_lp, m_ent = P_MLX.normal_logprob_entropy(m_agent.get_action_mean(m_obs), m_agent.actor_logstd, m_act)
    assert m_lp.shape == (B,) and m_ent.shape == (B,)
    assert_close(m_lp, t_lp, what="log-prob")
    assert_close(m_ent, t_ent, what="entropy")
    assert_close(m_agent.get_value(m_obs), t_agent.get_value(t_obs), what="value")


def test_logprob_entropy_match_closed_form():
    """Independent of both frameworks: a diagonal Gaussian summed over dimensions."""
    rng = np.random.default_rng(4)
    mean = rng.normal(size=(7, ACTION_DIM)).astype(np.float32)
    logstd = np.array([[-1.0, 0.2, 0.7]], dtype=np.float32)
    action = rng.normal(size=(7, ACTION_DIM)).astype(np.float32)
    std = np.exp(logstd)
    ref_lp = (-0.5 * ((action - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    ref_ent = np.broadcast_to(0.5 * np.log(2 * np.pi * np.e * std**2), mean.shape).sum(-1)
    lp, ent = P_MLX.normal_logprob_entropy(mx.array(mean), mx.array(logstd), mx.array(action))
    np.testing.assert_allclose(np.array(lp), ref_lp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(ent), ref_ent, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_adv", [True, False])
@pytest.mark.parametrize("clip_vloss", [True, False])
@pytest.mark.parametrize("ent_coef", [0.0, 0.01])
def test_loss_terms_and_gradients(twins, norm_adv, clip_vloss, ent_coef):
    t_agent, m_agent = twins
    b = make_batch()
    coefs = dict(clip_coef=0.2, ent_coef=ent_coef, vf_coef=0.5, norm_adv=norm_adv, clip_vloss=clip_vloss)

    t_loss, t_stats = P_TORCH.ppo_loss(t_agent, *as_torch(b), **coefs)
    t_agent.zero_grad()
    t_loss.backward()

    def loss_fn(*batch):
        return P_MLX.ppo_loss(m_agent, *batch, **coefs)

    (m_loss, m_stats), m_grads = nn.value_and_grad(m_agent, loss_fn)(*as_mlx(b))
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(STATS, m_stats, t_stats):
        assert_close(m, t, what=name)
    assert 0 < float(t_stats[5]) < 1, "the batch should exercise both the clipped and unclipped branches"
    assert float(t_agent.actor_logstd.grad.abs().sum()) > 0, "the log-std must receive a gradient"
    assert_same_grads(m_grads, t_agent)


def test_full_updates_match_and_the_first_is_adams(twins):
    """train_step as the scripts run it (the minibatch gathered from the batch, loss, gradients, clipping, the
    scripts' own Adam; MLX compiled): same loss terms and weights (actor_logstd included) in both twins after
    each of 3 updates. Against the formula: torch's first step is Adam's first step with CleanRL's lr 3e-4 and
    eps 1e-5, on gradients clipped to a global norm of 0.5."""
    t_agent, m_agent = twins
    batch = make_batch(seed=10, size=4 * B)
    check_ppo_full_updates(P_MLX, P_TORCH, m_agent, t_agent, (as_mlx(batch), as_torch(batch)), B, 3e-4, STATS)


def test_weights_load_across_frameworks(twins, tmp_path):
    """A file saved by either twin loads in the other (names and shapes match, log std included)."""
    t_agent, m_agent = twins
    fresh_m, fresh_t = cross_load(
        m_agent, t_agent, P_MLX.Agent(OBS_DIM, ACTION_DIM), P_TORCH.Agent(OBS_DIM, ACTION_DIM), tmp_path
    )
    b = make_batch()
    t_mean, m_mean = fresh_t.get_action_mean(torch.tensor(b["obs"])), fresh_m.get_action_mean(mx.array(b["obs"]))
    t_lp, _ = P_TORCH.normal_logprob_entropy(t_mean, fresh_t.actor_logstd, torch.tensor(b["actions"]))
    m_lp, _ = P_MLX.normal_logprob_entropy(m_mean, fresh_m.actor_logstd, mx.array(b["actions"]))
    assert_close(m_lp, t_lp)
    assert_close(fresh_m.actor_logstd, t_agent.actor_logstd)


def test_gae_is_the_same_in_both_twins():
    rng = np.random.default_rng(3)
    T, N = 37, 2
    rewards = rng.normal(size=(T, N)).astype(np.float32)
    values = rng.normal(size=(T, N)).astype(np.float32)
    dones = (rng.random((T, N)) < 0.15).astype(np.float32)
    next_value = rng.normal(size=N).astype(np.float32)
    next_done = np.array([0.0, 1.0], dtype=np.float32)
    m_adv, m_ret = P_MLX.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    t_adv, t_ret = P_TORCH.compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)
    np.testing.assert_array_equal(m_adv, t_adv)
    np.testing.assert_array_equal(m_ret, t_ret)
    # and it is the PPO template's GAE (checked there against an independent reference)
    np.testing.assert_array_equal(
        m_adv, load_script("ppo", "mlx").compute_gae(rewards, values, dones, next_value, next_done, 0.99, 0.95)[0]
    )


def test_wrapper_chain_normalises_and_clips():
    env = P_MLX.make_env("Pendulum-v1", 0, False, "unused", 0.99)()
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        obs, reward, *_ = env.step(np.array([5.0], dtype=np.float32))  # out of bounds: ClipAction
    assert obs.dtype == np.float32 and np.all(np.abs(obs) <= 10.0)
    assert abs(reward) <= 10.0
    assert P_MLX.obs_normalizer(env).obs_rms.count > 50


def test_pooled_obs_rms_equals_statistics_of_all_observations():
    """Pooling per-env running statistics is exact: same as one RunningMeanStd over every observation."""
    envs = P_MLX.gym.vector.SyncVectorEnv([P_MLX.make_env("Pendulum-v1", i, False, "unused", 0.99) for i in range(3)])
    envs.reset(seed=0)
    for _ in range(30):
        envs.step(envs.action_space.sample())
    pooled = P_MLX.pooled_obs_rms(envs)
    everything = P_MLX.gym.wrappers.utils.RunningMeanStd(shape=(3,), dtype=np.float64)
    for env in envs.envs:
        rms = P_MLX.obs_normalizer(env).obs_rms
        everything.update_from_moments(rms.mean, rms.var, rms.count)
    np.testing.assert_allclose(pooled["mean"], everything.mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled["var"], everything.var, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(pooled["count"], everything.count - 1e-4, rtol=1e-6)
    envs.close()


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_evaluate_uses_saved_obs_statistics(framework, tmp_path):
    """evaluate() loads {model}.obs_rms.npz into the eval env's NormalizeObservation and freezes it: after an
    episode its statistics are still exactly the saved ones. A file saved by the other twin is used."""
    module, other = TWINS[framework], TWINS["torch" if framework == "mlx" else "mlx"]
    model_path = str(tmp_path / "agent.safetensors")
    agent = other.Agent(3, 1)  # Pendulum-v1: 3 observations, 1 action
    if framework == "mlx":  # the other twin is torch
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in agent.state_dict().items()}, model_path)
    else:
        agent.save_weights(model_path)
    saved = {
        "mean": np.array([0.5, -0.25, 2.0], np.float32),
        "var": np.array([0.3, 0.7, 9.0], np.float32),
        "count": np.array(12345.0),
    }
    np.savez(model_path.replace(".safetensors", ".obs_rms.npz"), **saved)

    built = []

    def spy_make_env(*args):
        def thunk():
            built.append(module.make_env(*args)())
            return built[-1]

        return thunk

    device = mx.cpu if framework == "mlx" else torch.device("cpu")
    returns = module.evaluate(model_path, spy_make_env, "Pendulum-v1", 1, "eval", module.Agent, device, capture_video=False)
    assert len(returns) == 1 and len(built) == 1
    normalizer = module.obs_normalizer(built[0])
    assert normalizer.update_running_mean is False
    np.testing.assert_array_equal(normalizer.obs_rms.mean, saved["mean"])
    np.testing.assert_array_equal(normalizer.obs_rms.var, saved["var"])
    assert normalizer.obs_rms.count == 12345.0
