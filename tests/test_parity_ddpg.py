"""ddpg_mlx vs ddpg_torch: same weights and batch give the same actor output, target, critic and actor
losses and gradients, and one full train_step (critic-only and with the delayed actor step and target
updates); Adam's first step and the polyak update match their formulas; saved weights load across twins."""

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

D_MLX = load_script("ddpg", "mlx")
D_TORCH = load_script("ddpg", "torch")
OBS_DIM, ACT_DIM, B = 5, 2, 64
LOW, HIGH = np.array([-1.0, 0.0], dtype=np.float32), np.array([1.0, 4.0], dtype=np.float32)
NETS = ("actor", "qf", "target_actor", "qf_target")  # train_step's module arguments, in order


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

    check_actor_gradients(D_MLX, D_TORCH, m, t, b["obs"])


def test_polyak_update_formula(twins):
    t, m = twins
    for online, target in (("actor", "target_actor"), ("qf", "qf_target")):
        for script, nets in ((D_TORCH, t), (D_MLX, m)):
            check_polyak_update(script, nets[online], nets[target])


@pytest.mark.parametrize("update_actor", [False, True])
def test_full_update(twins, update_actor):
    """One train_step in both twins from the same weights and batch, with the scripts' own optimizers and
    default Args (MLX compiled as the script compiles it): the same weights come out, target networks
    included, and the same losses. Against the formulas: torch's first Adam step of the network trained
    last, and (with the actor step) the polyak update of both targets, in both twins."""
    t, m = twins
    args = D_MLX.Args()
    b = make_batch()
    batch = ("obs", "actions", "next_obs", "rewards", "dones")
    before = {k: trainable(t[k]) for k in NETS}
    t_opts = D_TORCH.make_optimizers(t["actor"], t["qf"], D_TORCH.Args())
    t_stats = D_TORCH.train_step(
        *(t[k] for k in NETS), t_opts, [torch.tensor(b[k]) for k in batch], update_actor=update_actor, args=args
    )
    m_opts = D_MLX.make_optimizers(m["actor"], m["qf"], args)
    state = [m[k].state for k in NETS] + [o.state for o in m_opts]
    train = mx.compile(
        partial(D_MLX.train_step, *(m[k] for k in NETS), m_opts, update_actor=update_actor, args=args),
        inputs=state,
        outputs=state,
    )
    m_stats = train([mx.array(b[k]) for k in batch])
    mx.eval(m_stats, state)
    for k in NETS:
        assert_same_weights(m[k], t[k], atol=1e-5, what=k)
    for name, ms, ts in zip(("qf1_loss", "qf1_values", "actor_loss"), m_stats, t_stats, strict=True):
        assert_close(ms, ts, atol=1e-4, what=name)
    check_actor_critic_targets(t, m, before, update_actor, args.tau, lr=3e-4)


def test_weights_load_across_frameworks(twins, tmp_path):
    """The actor (action-scale buffers included) and the critic saved by either twin load in the other."""
    t, m = twins
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    a = np.random.default_rng(1).uniform(LOW, HIGH, size=(5, ACT_DIM)).astype(np.float32)
    actor_m, actor_t = cross_load(
        m["actor"],
        t["actor"],
        D_MLX.Actor(OBS_DIM, ACT_DIM, np.zeros(2), np.ones(2)),
        D_TORCH.Actor(OBS_DIM, ACT_DIM, np.zeros(2), np.ones(2)),
        tmp_path,
    )
    assert_close(actor_m(mx.array(x)), t["actor"](torch.tensor(x)).detach(), what="torch actor loaded in MLX")
    assert_close(m["actor"](mx.array(x)), actor_t(torch.tensor(x)).detach(), what="MLX actor loaded in torch")
    assert_close(actor_t.action_scale, (HIGH - LOW) / 2)
    qf_m, qf_t = cross_load(m["qf"], t["qf"], D_MLX.QNetwork(OBS_DIM, ACT_DIM), D_TORCH.QNetwork(OBS_DIM, ACT_DIM), tmp_path)
    assert_close(
        qf_m(mx.array(x), mx.array(a)), t["qf"](torch.tensor(x), torch.tensor(a)).detach(), what="torch critic loaded in MLX"
    )
    assert_close(
        m["qf"](mx.array(x), mx.array(a)), qf_t(torch.tensor(x), torch.tensor(a)).detach(), what="MLX critic loaded in torch"
    )


def test_several_updates_stay_together(twins):
    """Six train_steps as the script's loop runs them (the critic every step, the actor and targets every
    policy_frequency-th, the two compiled graphs sharing one state), each on its own batch: every network moves the same
    way in both twins, so no state (Adam's step count and moments, the targets) is lost between calls."""
    t, m = twins
    args = D_MLX.Args()
    before = {k: trainable(t[k]) for k in NETS}
    t_opts = D_TORCH.make_optimizers(t["actor"], t["qf"], D_TORCH.Args())
    m_opts = D_MLX.make_optimizers(m["actor"], m["qf"], args)
    state = [m[k].state for k in NETS] + [o.state for o in m_opts]
    step = partial(D_MLX.train_step, *(m[k] for k in NETS), m_opts, args=args)
    train = {a: mx.compile(partial(step, update_actor=a), inputs=state, outputs=state) for a in (False, True)}
    batch = ("obs", "actions", "next_obs", "rewards", "dones")
    for i in range(1, 7):
        b, update_actor = make_batch(seed=i), i % args.policy_frequency == 0
        D_TORCH.train_step(
            *(t[k] for k in NETS), t_opts, [torch.tensor(b[k]) for k in batch], update_actor=update_actor, args=args
        )
        mx.eval(train[update_actor]([mx.array(b[k]) for k in batch]), state)
    assert [int(o.state["step"]) for o in m_opts] == [6, 3]
    assert_same_updates(before, t, m, NETS)
