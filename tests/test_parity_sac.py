"""sac_mlx vs sac_torch: same weights, batch and noise give the same squashed actions and log-probs,
critic targets, critic/actor/alpha losses and gradients, and one full train_step (critic-only, with the
actor and alpha steps, with and without autotune); Adam's first step and the polyak update match their
formulas; saved weights load across the twins."""

import dataclasses
import math
from functools import partial

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten

from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_polyak,
    assert_same_updates,
    assert_same_weights,
    check_polyak_update,
    continuous_batch,
    cross_load,
    load_script,
    torch_params_to_mlx,
    trainable,
)

S_MLX = load_script("sac", "mlx")
S_TORCH = load_script("sac", "torch")
OBS_DIM, ACT_DIM, B = 5, 3, 64
LOW, HIGH = np.array([-2.0, -1.0, 0.0], dtype=np.float32), np.array([2.0, 1.0, 3.0], dtype=np.float32)
NETS = ("actor", "qf", "qf_target")  # train_step's module arguments, in order (log-alpha follows)
STATS = ("qf_loss", "qf1_loss", "qf2_loss", "qf1_values", "qf2_values", "actor_loss", "alpha_loss")


@pytest.fixture
def twins():
    torch.manual_seed(0)
    t = {"actor": S_TORCH.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf": S_TORCH.SoftQNetwork(OBS_DIM, ACT_DIM)}
    t["qf_target"] = S_TORCH.SoftQNetwork(OBS_DIM, ACT_DIM)  # different weights from qf
    m = {"actor": S_MLX.Actor(OBS_DIM, ACT_DIM, LOW, HIGH), "qf": S_MLX.SoftQNetwork(OBS_DIM, ACT_DIM)}
    m["qf_target"] = S_MLX.SoftQNetwork(OBS_DIM, ACT_DIM)
    with torch.no_grad():  # means spread over tanh's slope; samples stay short of its float32 saturation,
        t["actor"].fc_mean.weight.normal_(0, 0.2)  # where 1 - tanh^2 (and so any float32 gradient) is ill-conditioned
    for k in t:
        torch_params_to_mlx(t[k], m[k])
    return t, m


def make_batch(seed=1):
    batch, rng = continuous_batch(seed, B, OBS_DIM, ACT_DIM, LOW, HIGH)
    return batch | {
        "eps": rng.normal(size=(B, ACT_DIM)).astype(np.float32),
        "eps2": rng.normal(size=(B, ACT_DIM)).astype(np.float32),
    }


def tb(b):
    return {k: torch.tensor(v) for k, v in b.items()}


def mb(b):
    return {k: mx.array(v) for k, v in b.items()}


def grads_match(m_grads, t_module, atol=1e-5):
    m_grads = dict(tree_flatten(m_grads))
    named = dict(t_module.named_parameters())
    assert sorted(m_grads) == sorted(named)
    for name, p in named.items():
        assert_close(m_grads[name], p.grad, atol=atol, rtol=1e-4, what=f"grad {name}")


def test_parameter_names_match_and_buffers_are_frozen(twins):
    t, m = twins
    for k in t:
        assert sorted(k for k, _ in tree_flatten(m[k].parameters())) == sorted(t[k].state_dict())
    trainable = sorted(k for k, _ in tree_flatten(m["actor"].trainable_parameters()))
    assert trainable == sorted(n for n, _ in t["actor"].named_parameters())
    assert "action_scale" not in trainable and m["qf"].fc1.weight.shape == (2, 256, OBS_DIM + ACT_DIM)


def test_stacked_critic_equals_two_separate_critics(twins):
    """Critic i of the stack is exactly CleanRL's separate qf{i+1}: cat -> Linear -> ReLU -> ... -> Linear."""
    t, _ = twins
    b = tb(make_batch())
    q = t["qf"](b["obs"], b["actions"])
    for i in range(2):
        x = torch.cat([b["obs"], b["actions"]], 1)
        for j, layer in enumerate((t["qf"].fc1, t["qf"].fc2, t["qf"].fc3)):
            x = torch.nn.functional.linear(x, layer.weight[i], layer.bias[i])
            x = torch.relu(x) if j < 2 else x
        assert_close(q[i].detach(), x.squeeze(-1), what=f"critic {i}")


def test_squashed_gaussian_logprob_with_correction(twins):
    t, m = twins
    b = make_batch()
    t_act, t_lp, t_mean = t["actor"].get_action(torch.tensor(b["obs"]), torch.tensor(b["eps"]))
    m_act, m_lp, m_mean = m["actor"].get_action(mx.array(b["obs"]), mx.array(b["eps"]))
    assert_close(m_act, t_act, what="action")
    assert_close(m_lp, t_lp, atol=1e-4, what="log-prob")
    assert_close(m_mean, t_mean, what="mean action")
    # independent check: Normal log-density of x_t minus log|d action / d x_t| (+1e-6), summed
    mean, log_std = (a.detach().numpy().astype(np.float64) for a in t["actor"](torch.tensor(b["obs"])))
    x_t = mean + np.exp(log_std) * b["eps"]
    scale = (HIGH - LOW) / 2
    ref = (-0.5 * b["eps"] ** 2 - log_std - 0.5 * math.log(2 * math.pi) - np.log(scale * (1 - np.tanh(x_t) ** 2) + 1e-6)).sum(1)
    np.testing.assert_allclose(np.asarray(m_lp)[:, 0], ref, atol=1e-4, rtol=1e-4)
    assert np.all(np.asarray(m_act) >= LOW) and np.all(np.asarray(m_act) <= HIGH)


def test_log_std_is_squashed_into_bounds(twins):
    t, m = twins
    x = 100 * make_batch()["obs"]  # drives the log-std head far past both bounds
    (_, t_log_std), (_, m_log_std) = t["actor"](torch.tensor(x)), m["actor"](mx.array(x))
    assert_close(m_log_std, t_log_std, atol=1e-5, what="log_std")
    m_log_std = np.asarray(m_log_std)
    assert m_log_std.min() >= -5 and m_log_std.max() <= 2
    assert m_log_std.min() < -4.5 and m_log_std.max() > 1.5


def test_critic_target_and_loss_and_gradients(twins):
    t, m = twins
    b = make_batch()
    T, M = tb(b), mb(b)
    t_y = S_TORCH.soft_q_target(t["actor"], t["qf_target"], T["next_obs"], T["rewards"], T["dones"], 0.3, 0.99, T["eps"])
    m_y = S_MLX.soft_q_target(m["actor"], m["qf_target"], M["next_obs"], M["rewards"], M["dones"], 0.3, 0.99, M["eps"])
    assert_close(m_y, t_y, atol=1e-5, what="critic target")
    # independent: r + gamma (1-d) (min_i Q'_i(s', a') - alpha log pi)
    a2, lp2, _ = t["actor"].get_action(T["next_obs"], T["eps"])
    q_next = t["qf_target"](T["next_obs"], a2).detach()
    ref = T["rewards"] + (1 - T["dones"]) * 0.99 * (torch.minimum(q_next[0], q_next[1]) - 0.3 * lp2[:, 0].detach())
    assert_close(m_y, ref, what="critic target vs formula")

    t_loss, t_stats = S_TORCH.critic_loss(t["qf"], T["obs"], T["actions"], t_y)
    t["qf"].zero_grad()
    t_loss.backward()
    (m_loss, m_stats), m_grads = S_MLX.nn.value_and_grad(m["qf"], lambda *a: S_MLX.critic_loss(m["qf"], *a))(
        M["obs"], M["actions"], m_y
    )
    assert_close(m_loss, t_loss, atol=1e-4, what="qf_loss")
    for name, ms, ts in zip(["qf1_loss", "qf2_loss", "qf1_values", "qf2_values"], m_stats, t_stats):
        assert_close(ms, ts, atol=1e-4, what=name)
    grads_match(m_grads, t["qf"])


def test_actor_and_alpha_losses_and_gradients(twins):
    t, m = twins
    b = make_batch()
    T, M = tb(b), mb(b)
    t_loss = S_TORCH.actor_loss_fn(t["actor"], t["qf"], T["obs"], 0.3, T["eps"])
    t["actor"].zero_grad()
    t["qf"].zero_grad()
    t_loss.backward()
    m_loss, m_grads = S_MLX.nn.value_and_grad(m["actor"], lambda o, e: S_MLX.actor_loss_fn(m["actor"], m["qf"], o, 0.3, e))(
        M["obs"], M["eps"]
    )
    assert_close(m_loss, t_loss, atol=1e-5, what="actor_loss")
    grads_match(m_grads, t["actor"])

    t_log_alpha = torch.tensor([0.4], requires_grad=True)
    with torch.no_grad():
        _, t_lp, _ = t["actor"].get_action(T["obs"], T["eps2"])
    t_aloss = S_TORCH.alpha_loss_fn(t_log_alpha, t_lp, -float(ACT_DIM))
    t_aloss.backward()
    _, m_lp, _ = m["actor"].get_action(M["obs"], M["eps2"])
    m_aloss, m_agrad = mx.value_and_grad(S_MLX.alpha_loss_fn)(mx.array([0.4]), m_lp, -float(ACT_DIM))
    assert_close(m_aloss, t_aloss, atol=1e-5, what="alpha_loss")
    assert_close(m_agrad, t_log_alpha.grad, atol=1e-5, what="alpha grad")


def test_polyak_update_formula(twins):
    t, m = twins
    for script, nets in ((S_TORCH, t), (S_MLX, m)):
        check_polyak_update(script, nets["qf"], nets["qf_target"])


@pytest.mark.parametrize(
    "update_actor,update_target,autotune,policy_frequency",
    [(False, True, True, 2), (True, False, True, 1), (True, True, True, 2), (True, True, False, 2)],
)
def test_full_update(twins, update_actor, update_target, autotune, policy_frequency):
    """One train_step in both twins from the same weights, batch and noise, with the scripts' own optimizers
    and default Args (MLX compiled as the script compiles it): the same weights come out (target network and
    log-alpha included) and the same losses. Against the formulas: torch's first Adam step of the critics
    (critic-only step) or of the actor and log-alpha (one actor step), and the polyak update of the target."""
    t, m = twins
    args = dataclasses.replace(S_MLX.Args(), policy_frequency=policy_frequency, autotune=autotune)
    kw = dict(update_actor=update_actor, update_target=update_target, target_entropy=-float(ACT_DIM), args=args)
    b = make_batch()
    eps = np.random.default_rng(7).normal(size=(1 + 2 * policy_frequency * update_actor, B, ACT_DIM)).astype(np.float32)
    batch = [b[k] for k in ("obs", "actions", "next_obs", "rewards", "dones")]
    before = {k: trainable(t[k]) for k in NETS} | {"log_alpha": {"log_alpha": np.array([0.2], dtype=np.float32)}}
    t_log_alpha = torch.tensor([0.2], requires_grad=True)
    t_opts = S_TORCH.make_optimizers(t["actor"], t["qf"], t_log_alpha, S_TORCH.Args())
    t_stats = S_TORCH.train_step(
        *(t[k] for k in NETS), t_log_alpha, t_opts, list(map(torch.tensor, batch)), torch.tensor(eps), **kw
    )
    m_log_alpha = {"log_alpha": mx.array([0.2])}
    m_opts = S_MLX.make_optimizers(m["actor"], m["qf"], m_log_alpha, args)
    state = [m[k].state for k in NETS] + [m_log_alpha] + [o.state for o in m_opts]
    train = mx.compile(partial(S_MLX.train_step, *(m[k] for k in NETS), m_log_alpha, m_opts, **kw), inputs=state, outputs=state)
    m_stats = train(list(map(mx.array, batch)), mx.array(eps))
    mx.eval(m_stats, state)
    for k in NETS:
        assert_same_weights(m[k], t[k], atol=1e-5, what=k)
    assert_close(m_log_alpha["log_alpha"], t_log_alpha, atol=1e-5, what="log_alpha")
    for name, ms, ts in zip(STATS, m_stats, t_stats, strict=True):
        assert_close(ms, ts, atol=1e-4, what=name)
    if not update_actor:  # the actor loss's gradient also lands in the critics' p.grad
        grads = {n: p.grad.numpy().copy() for n, p in t["qf"].named_parameters()}
        assert_first_adam_step(before["qf"], trainable(t["qf"]), grads, lr=1e-3, eps=1e-8)
    if policy_frequency == 1:
        grads = {n: p.grad.numpy().copy() for n, p in t["actor"].named_parameters()}
        assert_first_adam_step(before["actor"], trainable(t["actor"]), grads, lr=3e-4, eps=1e-8)
        after = {"log_alpha": t_log_alpha.detach().numpy()}
        assert_first_adam_step(before["log_alpha"], after, {"log_alpha": t_log_alpha.grad.numpy()}, lr=1e-3, eps=1e-8)
    if update_actor and not autotune:
        assert t_log_alpha.item() == np.float32(0.2) and m_log_alpha["log_alpha"].item() == np.float32(0.2)
    for nets in (t, m):
        if update_target:
            assert_polyak(trainable(nets["qf"]), before["qf_target"], trainable(nets["qf_target"]), args.tau)
        else:
            assert all(np.array_equal(v, before["qf_target"][k]) for k, v in trainable(nets["qf_target"]).items())


def test_weights_load_across_frameworks(twins, tmp_path):
    """The actor saved by either twin (buffers included) loads in the other."""
    t, m = twins
    fresh_m, fresh_t = cross_load(
        m["actor"],
        t["actor"],
        S_MLX.Actor(OBS_DIM, ACT_DIM, np.zeros(ACT_DIM), np.ones(ACT_DIM)),
        S_TORCH.Actor(OBS_DIM, ACT_DIM, np.zeros(ACT_DIM), np.ones(ACT_DIM)),
        tmp_path,
    )
    x = np.random.default_rng(0).normal(size=(5, OBS_DIM)).astype(np.float32)
    assert_close(
        fresh_m.get_action(mx.array(x), mx.zeros((5, ACT_DIM)))[2],
        fresh_t.get_action(torch.tensor(x), torch.zeros(5, ACT_DIM))[2],
    )
    assert_close(fresh_t.action_scale, (HIGH - LOW) / 2)


def test_several_updates_stay_together(twins):
    """Six train_steps as the script's loop runs them with default Args (the critics and the target every step, the
    actor and log-alpha policy_frequency times every policy_frequency-th step, each (actor?, target?) graph compiled
    on its own over one shared state), each on its own batch and noise: every network and log-alpha moves the same way
    in both twins, so no state (Adam's step counts and moments, the target, log-alpha) is lost between calls."""
    t, m = twins
    args = S_MLX.Args()
    kw = dict(target_entropy=-float(ACT_DIM), args=args)
    before = {k: trainable(t[k]) for k in NETS}
    t_log_alpha = torch.tensor([0.0], requires_grad=True)
    t_opts = S_TORCH.make_optimizers(t["actor"], t["qf"], t_log_alpha, S_TORCH.Args())
    m_log_alpha = {"log_alpha": mx.array([0.0])}
    m_opts = S_MLX.make_optimizers(m["actor"], m["qf"], m_log_alpha, args)
    state = [m[k].state for k in NETS] + [m_log_alpha] + [o.state for o in m_opts]
    step = partial(S_MLX.train_step, *(m[k] for k in NETS), m_log_alpha, m_opts, **kw)
    train = {
        (a, u): mx.compile(partial(step, update_actor=a, update_target=u), inputs=state, outputs=state)
        for a in (False, True)
        for u in (False, True)
    }
    for i in range(1, 7):
        b = make_batch(seed=i)
        update_actor, update_target = i % args.policy_frequency == 0, i % args.target_network_frequency == 0
        eps = np.random.default_rng(i).normal(size=(1 + 2 * args.policy_frequency * update_actor, B, ACT_DIM)).astype(np.float32)
        batch = [b[k] for k in ("obs", "actions", "next_obs", "rewards", "dones")]
        flags = dict(update_actor=update_actor, update_target=update_target)
        S_TORCH.train_step(
            *(t[k] for k in NETS), t_log_alpha, t_opts, list(map(torch.tensor, batch)), torch.tensor(eps), **flags, **kw
        )
        mx.eval(train[update_actor, update_target](list(map(mx.array, batch)), mx.array(eps)), state)
    assert [int(o.state["step"]) for o in m_opts] == [6, 6, 6]  # the critics; the actor and log-alpha, twice per 2nd step
    assert_same_updates(before, t, m, NETS)
    moved, apart = abs(t_log_alpha.item()), abs(m_log_alpha["log_alpha"].item() - t_log_alpha.item())
    assert moved > 0 and apart <= 2e-2 * moved, f"log_alpha: {m_log_alpha['log_alpha'].item()} vs {t_log_alpha.item()}"
