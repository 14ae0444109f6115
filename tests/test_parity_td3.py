"""td3_mlx vs td3_torch: same weights, batch and noise give the same actions, smoothed clipped-double-Q
targets, critic and actor losses and gradients, and one full train_step (critic-only and with the delayed
actor step and target updates); Adam's first step and the polyak update match their formulas; saved
weights load across twins."""

from functools import partial

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_same_updates,
    assert_same_weights,
    check_actor_critic_targets,
    check_actor_gradients,
    check_polyak_update,
    continuous_batch,
    cross_load,
    load_script,
    torch_params_to_mlx,
    trainable,
)

T_MLX = load_script("td3", "mlx")
T_TORCH = load_script("td3", "torch")
OBS_DIM, ACT_DIM, B = 5, 3, 64
LOW, HIGH = np.full(ACT_DIM, -2.0, dtype=np.float32), np.full(ACT_DIM, 2.0, dtype=np.float32)
NETS = ("actor", "qf", "target_actor", "qf_target")  # train_step's module arguments, in order
STATS = ("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t = {"actor": T_TORCH.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf": T_TORCH.QNetwork(OBS_DIM, ACT_DIM)}
    t |= {"target_actor": T_TORCH.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf_target": T_TORCH.QNetwork(OBS_DIM, ACT_DIM)}
    m = {"actor": T_MLX.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf": T_MLX.QNetwork(OBS_DIM, ACT_DIM)}
    m |= {"target_actor": T_MLX.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf_target": T_MLX.QNetwork(OBS_DIM, ACT_DIM)}
    with torch.no_grad():  # target actions near the bounds, so the action clamp matters
        t["target_actor"].fc_mu.weight.normal_(0, 1.0)
    for k in t:
        torch_params_to_mlx(t[k], m[k])
    return t, m


def make_batch(seed=1):
    batch, rng = continuous_batch(seed, B, OBS_DIM, ACT_DIM, LOW, HIGH)
    return batch | {
        "noise": (2 * rng.normal(size=(B, ACT_DIM))).astype(np.float32),  # wide, so noise_clip matters
    }


def test_parameter_names_match(twins):
    t, m = twins
    for k in t:
        assert sorted(k for k, _ in tree_flatten(m[k].parameters())) == sorted(t[k].state_dict())
    assert sorted(k for k, _ in tree_flatten(m["actor"].trainable_parameters())) == sorted(
        n for n, _ in t["actor"].named_parameters()
    )


def test_actor_and_q1(twins):
    t, m = twins
    b = make_batch()
    assert_close(m["actor"](mx.array(b["obs"])), t["actor"](torch.tensor(b["obs"])).detach(), what="actor")
    o, a = torch.tensor(b["obs"]), torch.tensor(b["actions"])
    assert_close(m["qf"].q1(mx.array(b["obs"]), mx.array(b["actions"])), t["qf"].q1(o, a).detach(), what="q1")
    assert_close(t["qf"].q1(o, a).detach(), t["qf"](o, a)[0].detach(), what="q1 is critic 0 of the stack")


def test_target_with_shared_noise(twins):
    t, m = twins
    b = make_batch()
    args = (0.2, 0.5, -2.0, 2.0, 0.99)
    T_ = {k: torch.tensor(v) for k, v in b.items()}
    M_ = {k: mx.array(v) for k, v in b.items()}
    t_y = T_TORCH.td3_target(t["target_actor"], t["qf_target"], T_["next_obs"], T_["rewards"], T_["dones"], T_["noise"], *args)
    m_y = T_MLX.td3_target(m["target_actor"], m["qf_target"], M_["next_obs"], M_["rewards"], M_["dones"], M_["noise"], *args)
    assert_close(m_y, t_y, what="td3 target")
    # independent numpy form of target policy smoothing and clipped double Q
    with torch.no_grad():
        mu = t["target_actor"](T_["next_obs"]).numpy()
    a2 = np.clip(mu + np.clip(0.2 * b["noise"], -0.5, 0.5) * 2.0, -2.0, 2.0)
    assert (np.abs(0.2 * b["noise"]) > 0.5).any() and (np.abs(mu + np.clip(0.2 * b["noise"], -0.5, 0.5) * 2.0) > 2).any()
    with torch.no_grad():
        q = t["qf_target"](T_["next_obs"], torch.tensor(a2, dtype=torch.float32)).numpy()
    ref = b["rewards"] + (1 - b["dones"]) * 0.99 * q.min(0)
    np.testing.assert_allclose(np.asarray(m_y), ref, atol=1e-5, rtol=1e-5)


def test_critic_and_actor_losses_and_gradients(twins):
    t, m = twins
    b = make_batch()
    o, a, y = (torch.tensor(b[k]) for k in ("obs", "actions", "rewards"))
    t_loss, t_stats = T_TORCH.critic_loss(t["qf"], o, a, y)
    t["qf"].zero_grad()
    t_loss.backward()
    (m_loss, m_stats), m_grads = T_MLX.nn.value_and_grad(m["qf"], lambda *x: T_MLX.critic_loss(m["qf"], *x))(
        mx.array(b["obs"]), mx.array(b["actions"]), mx.array(b["rewards"])
    )
    assert_close(m_loss, t_loss, atol=1e-4, what="qf_loss")
    for name, ms, ts in zip(["qf1_loss", "qf2_loss", "qf1_values", "qf2_values"], m_stats, t_stats):
        assert_close(ms, ts, atol=1e-4, what=name)
    m_grads = dict(tree_flatten(m_grads))
    for name, p in t["qf"].named_parameters():
        assert_close(m_grads[name], p.grad, atol=1e-5, rtol=1e-4, what=f"critic grad {name}")

    check_actor_gradients(T_MLX, T_TORCH, m, t, b["obs"])


def test_polyak_update_formula(twins):
    t, m = twins
    for online, target in (("actor", "target_actor"), ("qf", "qf_target")):
        for script, nets in ((T_TORCH, t), (T_MLX, m)):
            check_polyak_update(script, nets[online], nets[target])


@pytest.mark.parametrize("update_actor", [False, True])
def test_full_update(twins, update_actor):
    """One train_step in both twins from the same weights, batch and noise, with the scripts' own optimizers
    and default Args (MLX compiled as the script compiles it): the same weights come out, target networks
    included, and the same losses. Against the formulas: torch's first Adam step of the network trained
    last, and (with the actor step) the polyak update of both targets, in both twins."""
    t, m = twins
    args = T_MLX.Args()
    kw = dict(update_actor=update_actor, low=-2.0, high=2.0, args=args)
    b = make_batch()
    batch = ("obs", "actions", "next_obs", "rewards", "dones")
    before = {k: trainable(t[k]) for k in NETS}
    t_opts = T_TORCH.make_optimizers(t["actor"], t["qf"], T_TORCH.Args())
    t_stats = T_TORCH.train_step(
        *(t[k] for k in NETS), t_opts, [torch.tensor(b[k]) for k in batch], torch.tensor(b["noise"]), **kw
    )
    m_opts = T_MLX.make_optimizers(m["actor"], m["qf"], args)
    state = [m[k].state for k in NETS] + [o.state for o in m_opts]
    train = mx.compile(partial(T_MLX.train_step, *(m[k] for k in NETS), m_opts, **kw), inputs=state, outputs=state)
    m_stats = train([mx.array(b[k]) for k in batch], mx.array(b["noise"]))
    mx.eval(m_stats, state)
    for k in NETS:
        assert_same_weights(m[k], t[k], atol=1e-5, what=k)
    for name, ms, ts in zip(STATS, m_stats, t_stats, strict=True):
        assert_close(ms, ts, atol=1e-4, what=name)
    check_actor_critic_targets(t, m, before, update_actor, args.tau, lr=3e-4)


def test_weights_load_across_frameworks(twins, tmp_path):
    t, m = twins
    fresh_m, fresh_t = cross_load(
        m["actor"],
        t["actor"],
        T_MLX.Actor(OBS_DIM, ACT_DIM, np.zeros(ACT_DIM), np.ones(ACT_DIM)),
        T_TORCH.Actor(OBS_DIM, ACT_DIM, np.zeros(ACT_DIM), np.ones(ACT_DIM)),
        tmp_path,
    )
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(fresh_m(mx.array(x)), fresh_t(torch.tensor(x)).detach())


def test_several_updates_stay_together(twins):
    """Six train_steps as the script's loop runs them (the critics every step, the actor and targets every
    policy_frequency-th, the two compiled graphs sharing one state), each on its own batch and noise: every network
    moves the same way in both twins, so no state (Adam's step count and moments, the targets) is lost between calls."""
    t, m = twins
    args = T_MLX.Args()
    kw = dict(low=-2.0, high=2.0, args=args)
    before = {k: trainable(t[k]) for k in NETS}
    t_opts = T_TORCH.make_optimizers(t["actor"], t["qf"], T_TORCH.Args())
    m_opts = T_MLX.make_optimizers(m["actor"], m["qf"], args)
    state = [m[k].state for k in NETS] + [o.state for o in m_opts]
    step = partial(T_MLX.train_step, *(m[k] for k in NETS), m_opts, **kw)
    train = {a: mx.compile(partial(step, update_actor=a), inputs=state, outputs=state) for a in (False, True)}
    batch = ("obs", "actions", "next_obs", "rewards", "dones")
    for i in range(1, 7):
        b, update_actor = make_batch(seed=i), i % args.policy_frequency == 0
        T_TORCH.train_step(
            *(t[k] for k in NETS), t_opts, [torch.tensor(b[k]) for k in batch], torch.tensor(b["noise"]),
            update_actor=update_actor, **kw,
        )  # fmt: skip
        mx.eval(train[update_actor]([mx.array(b[k]) for k in batch], mx.array(b["noise"])), state)
    assert [int(o.state["step"]) for o in m_opts] == [6, 3]
    assert_same_updates(before, t, m, NETS)
