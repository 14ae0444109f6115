"""allo_mlx / allo_torch: the sampler, the gridworld's transition matrix, the cosine-similarity metric,
the stop-gradient structure of the constraints, MLX-vs-torch parity of the loss, gradients and one
full step, runs of both scripts (logging, --save-model, --plot, bad layouts), and learning.

ALLO is not an environment-interaction script (no episodic returns, no env_us/inference_us), so its
smoke and learning checks live here rather than in test_smoke.py / test_learning.py; its bad-input
cases that need no file are in test_bad_input.py's BAD list."""

import mlx.core as mx
import numpy as np
import pytest
import torch
from mlx.utils import tree_flatten, tree_map

from tests.helpers import (
    assert_close,
    assert_first_adam_step,
    assert_rejected,
    assert_same_grads,
    assert_same_weights,
    check_ok,
    cross_load,
    load_script,
    run_dirs,
    run_script,
    scalars_of_single_run,
    torch_params,
    torch_params_to_mlx,
)

A_MLX = load_script("allo", "mlx")
A_TORCH = load_script("allo", "torch")
SMALL = "GridRoomSmallAsym-1"  # 5x6 open room: 30 states, eigenvalues 5-6 and 9-10 repeated


def dynamics(name):
    return A_MLX.grid_dynamics(A_MLX.parse_layout(A_MLX.LAYOUTS[name]))


# --- sampler -------------------------------------------------------------------------------------


def expected_offset(episode_len, gamma):
    """E[t2 - t1] under the sampler's law, by enumeration: t1 uniform over the steps with a successor,
    then 1 + a draw on {0, ..., n-1} with P(i) proportional to gamma**i, n = steps left after t1."""
    means = []
    for t1 in range(episode_len - 1):
        p = gamma ** np.arange(episode_len - 1 - t1)
        means.append(1 + (np.arange(len(p)) * p).sum() / p.sum())
    return np.mean(means)


def sample_batch_loop(episodes, batch_size, gamma, rng):
    """The scripts' sample_batch one sample at a time, as the authors' buffer gathers them: a slow reference."""
    num_episodes, episode_len = episodes.shape
    ids = np.empty(4 * batch_size, dtype=episodes.dtype)
    for i in range(batch_size):
        e, t = rng.integers(num_episodes), rng.integers(episode_len - 1)
        ids[i] = episodes[e, t]
        ids[batch_size + i] = episodes[e, t + 1 + A_MLX.truncated_geometric(np.array(episode_len - 1 - t), gamma, rng)]
    for j in (2, 3):
        for i in range(batch_size):
            ids[j * batch_size + i] = episodes[rng.integers(num_episodes), rng.integers(episode_len)]
    return ids


@pytest.mark.parametrize("sampler", [A_MLX.sample_batch, sample_batch_loop])
@pytest.mark.parametrize("gamma", [0.9, 0.99])
def test_pairs_stay_inside_their_episode(sampler, gamma):
    num_episodes, episode_len, batch = 40, 51, 4096 if sampler is A_MLX.sample_batch else 1024
    episodes = np.arange(num_episodes * episode_len).reshape(num_episodes, episode_len)  # id encodes (episode, step)
    ids = sampler(episodes, batch, gamma, np.random.default_rng(0))
    assert ids.shape == (4 * batch,)
    ep, t = np.divmod(ids, episode_len)
    np.testing.assert_array_equal(ep[:batch], ep[batch : 2 * batch])  # s and s' from one episode
    offsets = t[batch : 2 * batch] - t[:batch]
    assert offsets.min() >= 1 and t[batch : 2 * batch].max() <= episode_len - 1
    # the mean offset matches the truncated geometric law (standard error ~0.03 at gamma 0.9)
    assert abs(offsets.mean() - expected_offset(episode_len, gamma)) < 5 * offsets.std() / np.sqrt(batch)
    # single states: uniform over episodes and over all steps, the last one included
    assert t[2 * batch :].min() == 0 and t[2 * batch :].max() == episode_len - 1
    assert abs(t[2 * batch :].mean() - (episode_len - 1) / 2) < 5 * 14.7 / np.sqrt(2 * batch)
    assert len(np.unique(ep[2 * batch :])) == num_episodes


def test_truncated_geometric_law():
    rng = np.random.default_rng(1)
    n = np.full(200_000, 5)
    draws = A_MLX.truncated_geometric(n, 0.7, rng)
    assert draws.min() == 0 and draws.max() == 4
    p = 0.7 ** np.arange(5)
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / len(draws), p / p.sum(), atol=0.005)
    assert (A_MLX.truncated_geometric(np.array([1, 1, 1]), 0.9, rng) == 0).all()  # a single choice


def test_episodes_are_random_walks():
    cells, next_state = dynamics("GridRoom-4")
    episodes = A_MLX.collect_episodes(next_state, 200, 50, np.random.default_rng(0))
    assert episodes.shape == (200, 51)
    steps = np.stack([episodes[:, :-1].ravel(), episodes[:, 1:].ravel()], 1)
    legal = (next_state[steps[:, 0]] == steps[:, 1:]).any(1)
    assert legal.all(), "a step that is not one of the four moves"
    assert len(np.unique(episodes[:, 0])) > 0.7 * len(cells)  # uniform start cells


def test_mlx_and_torch_draw_the_same_data():
    _, next_state = dynamics(SMALL)
    for module in (A_MLX, A_TORCH):
        rng = np.random.default_rng(3)
        episodes = module.collect_episodes(next_state, 50, 50, rng)
        ids = module.sample_batch(episodes, 64, 0.9, rng)
        if module is A_MLX:
            ref = ids
    np.testing.assert_array_equal(ref, ids)


# --- gridworld and ground truth ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(A_MLX.LAYOUTS))
def test_transition_matrix_symmetric_row_stochastic(name):
    cells, next_state = dynamics(name)
    P = A_MLX.transition_matrix(next_state)
    np.testing.assert_allclose(P.sum(1), 1.0)
    np.testing.assert_array_equal(P, P.T)
    # a corner cell has two walls: stays with probability 1/2; moves only to 4-neighbours
    corner = np.flatnonzero((cells == cells.min(0)).all(1))[0]
    assert P[corner, corner] == 0.5
    rows, cols = np.nonzero(P)
    assert (np.abs(cells[rows] - cells[cols]).sum(1) <= 1).all()
    eigvals, _ = A_MLX.laplacian_eigenpairs(P)
    assert abs(eigvals[0]) < 1e-12 and eigvals[1] > 1e-6  # connected: one zero eigenvalue


def test_layouts_are_the_authors():
    sizes = {name: (A_MLX.parse_layout(text).shape, int(A_MLX.parse_layout(text).sum())) for name, text in A_MLX.LAYOUTS.items()}
    assert sizes == {
        "GridRoomSmallAsym-1": ((7, 8), 30),
        "GridRoom-4": ((13, 13), 104),
        "GridRoom-16": ((21, 21), 271),
        "GridMaze-17": ((17, 19), 87),
    }


# --- metric --------------------------------------------------------------------------------------


def small_truth():
    _, next_state = dynamics(SMALL)
    return A_MLX.laplacian_eigenpairs(A_MLX.transition_matrix(next_state))


def rotation(k, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(k, k)))
    return q


def test_metric_blocks():
    eigvals, _ = small_truth()
    assert A_MLX.eigen_blocks(eigvals, 11) == [(i, i + 1) for i in range(5)] + [(5, 7), (7, 8), (8, 9), (9, 11)]
    assert A_MLX.eigen_blocks(eigvals, 6)[-1] == (5, 7)  # d cuts the repeated eigenvalue


def test_metric_invariant_to_signs_and_rotations_within_blocks():
    eigvals, eigvecs = small_truth()
    d = 11
    flip_rotate = np.diag(np.where(np.arange(d) % 3 == 0, -1.0, 1.0))
    flip_rotate[5:7, 5:7] = rotation(2, 0)
    flip_rotate[9:11, 9:11] = rotation(2, 1) @ np.diag([1.0, -1.0])
    cos, _ = A_MLX.align_to_eigenvectors(3.0 * eigvecs[:, :d] @ flip_rotate, eigvals, eigvecs)
    np.testing.assert_allclose(cos, 1.0, atol=1e-10)
    # an imperfect encoder scores the same, vector by vector, however its blocks are rotated
    noisy = eigvecs[:, :d] + 0.15 * np.random.default_rng(2).normal(size=(len(eigvecs), d))
    cos_noisy, _ = A_MLX.align_to_eigenvectors(noisy, eigvals, eigvecs)
    cos_rotated, _ = A_MLX.align_to_eigenvectors(noisy @ flip_rotate, eigvals, eigvecs)
    np.testing.assert_allclose(cos_rotated, cos_noisy, atol=1e-10)
    assert 0.7 < cos_noisy.mean() < 0.99
    # ... but a rotation across different eigenvalues is an error, and random vectors score low
    mixed = eigvecs[:, :d].copy()
    mixed[:, 1:3] = mixed[:, 1:3] @ rotation(2, 3)
    assert A_MLX.align_to_eigenvectors(mixed, eigvals, eigvecs)[0][1:3].max() < 0.999
    random = np.random.default_rng(4).normal(size=(len(eigvecs), d))
    assert A_MLX.align_to_eigenvectors(random, eigvals, eigvecs)[0].mean() < 0.5


def test_metric_when_d_cuts_a_repeated_eigenvalue():
    eigvals, eigvecs = small_truth()
    # vector 5 may be any unit vector of the 2-d eigenspace {5, 6}
    learned = eigvecs[:, :6].copy()
    learned[:, 5] = eigvecs[:, 5:7] @ np.array([0.6, -0.8])
    np.testing.assert_allclose(A_MLX.align_to_eigenvectors(learned, eigvals, eigvecs)[0], 1.0, atol=1e-10)
    learned[:, 5] = eigvecs[:, 7]  # the next eigenvalue's vector is not in it
    assert A_MLX.align_to_eigenvectors(learned, eigvals, eigvecs)[0][5] < 1e-6


def test_metric_twins_agree():
    eigvals, eigvecs = small_truth()
    noisy = eigvecs[:, :11] + 0.2 * np.random.default_rng(5).normal(size=(30, 11))
    for a, b in zip(A_MLX.align_to_eigenvectors(noisy, eigvals, eigvecs), A_TORCH.align_to_eigenvectors(noisy, eigvals, eigvecs)):
        np.testing.assert_array_equal(a, b)


# --- loss: stop-gradient structure and parity ----------------------------------------------------

D, B = 4, 64


def objective_inputs(seed=0):
    rng = np.random.default_rng(seed)
    phis = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(4)]
    duals = np.tril(rng.normal(size=(D, D))).astype(np.float32)
    return phis, duals, np.float32(1.7)


def constraint_grads(framework, phis, duals, barrier):
    """Gradients of the ALLO objective w.r.t. the two constraint batches u1, u2."""
    if framework == "mlx":

        def f(u1, u2):
            return A_MLX.allo_objective(mx.array(phis[0]), mx.array(phis[1]), u1, u2, mx.array(duals), mx.array(barrier))[0]

        g1, g2 = mx.grad(f, argnums=(0, 1))(mx.array(phis[2]), mx.array(phis[3]))
        return np.array(g1), np.array(g2)
    u1, u2 = (torch.tensor(p, requires_grad=True) for p in phis[2:])
    loss = A_TORCH.allo_objective(
        torch.tensor(phis[0]), torch.tensor(phis[1]), u1, u2, torch.tensor(duals), torch.tensor(barrier)
    )[0]
    loss.backward()
    return u1.grad.numpy(), u2.grad.numpy()


@pytest.mark.parametrize("framework", ["mlx", "torch"])
def test_later_constraints_do_not_move_earlier_vectors(framework):
    phis, duals, barrier = objective_inputs()
    base = constraint_grads(framework, phis, duals, barrier)
    for k in range(D - 1):
        # change every later vector and every later dual: the gradient of vectors 0..k stays put
        changed = [p.copy() for p in phis]
        for p in changed[2:]:
            p[:, k + 1 :] = np.random.default_rng(k).normal(size=(B, D - k - 1))
        changed_duals = duals.copy()
        changed_duals[k + 1 :] += 3.0
        grads = constraint_grads(framework, changed, changed_duals, barrier)
        for g, g0 in zip(grads, base):
            np.testing.assert_allclose(g[:, : k + 1], g0[:, : k + 1], atol=1e-6)
            assert np.abs(g[:, k + 1 :] - g0[:, k + 1 :]).max() > 1e-3  # later vectors do feel the change
    # and an earlier vector does push the later ones
    changed = [p.copy() for p in phis]
    for p in changed[2:]:
        p[:, 0] += 1.0
    grads = constraint_grads(framework, changed, duals, barrier)
    assert np.abs(grads[0][:, 1:] - base[0][:, 1:]).max() > 1e-3


@pytest.fixture
def twin_encoders():
    torch.manual_seed(0)
    t_enc = A_TORCH.Encoder(2, D, (32, 32))
    m_enc = A_MLX.Encoder(2, D, (32, 32))
    torch_params_to_mlx(t_enc, m_enc)
    return t_enc, m_enc


def test_encoder_parameter_names_match(twin_encoders):
    t_enc, m_enc = twin_encoders
    assert sorted(k for k, _ in tree_flatten(m_enc.parameters())) == sorted(t_enc.state_dict())


def test_loss_and_gradient_parity(twin_encoders):
    import mlx.nn as nn

    t_enc, m_enc = twin_encoders
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.5, 0.5, size=(4 * B, 2)).astype(np.float32)
    duals = (0.5 * np.tril(rng.normal(size=(D, D)))).astype(np.float32)
    barrier = np.float32(0.8)

    t_loss, t_aux = A_TORCH.allo_loss(t_enc, torch.tensor(obs), torch.tensor(duals), torch.tensor(barrier))
    t_loss.backward()
    loss_and_grad = nn.value_and_grad(m_enc, lambda *a: A_MLX.allo_loss(m_enc, *a))
    (m_loss, m_aux), m_grad_tree = loss_and_grad(mx.array(obs), mx.array(duals), mx.array(barrier))
    assert_close(m_loss, t_loss, what="loss")
    for name, m, t in zip(["graph", "dual", "barrier", "errors", "quadratic_errors"], m_aux, t_aux):
        assert_close(m, t, what=name)
    assert abs(t_aux[1].item()) > 1e-3 and abs(t_aux[2].item()) > 1e-4  # every term is live
    assert_same_grads(m_grad_tree, t_enc)


def test_multiplier_updates_against_their_formulas():
    rng = np.random.default_rng(0)
    duals, barrier = (0.5 * np.tril(rng.normal(size=(D, D)))).astype(np.float32), np.float32(0.8)
    running = np.zeros((D, D), dtype=np.float32)
    for step in range(2):  # the first barrier update takes E1 * E2 whole, later ones a running mean
        quad = (np.tril(rng.normal(size=(D, D))) * 0.3).astype(np.float32)
        m_b, m_run = A_MLX.update_barrier(mx.array(barrier), mx.array(running), mx.array(quad), 0.1, 0.5, 1e4)
        t_b, t_run = A_TORCH.update_barrier(torch.tensor(barrier), torch.tensor(running), torch.tensor(quad), 0.1, 0.5, 1e4)
        assert_close(m_b, t_b, what="barrier")
        assert_close(m_run, t_run, what="running quadratic errors")
        expected = quad if step == 0 else running + 0.1 * (quad - running)
        np.testing.assert_allclose(np.array(m_run), expected, atol=1e-6)
        np.testing.assert_allclose(np.array(m_b), barrier + 0.5 * np.maximum(expected, 0).mean(), atol=1e-6)
        barrier, running = np.array(m_b), np.array(m_run)
    errors = rng.normal(size=(D, D)).astype(np.float32) * 1e6  # large enough to hit the clip
    m_duals = A_MLX.update_duals(mx.array(duals), mx.array(errors), 1e-4, 100.0)
    t_duals = A_TORCH.update_duals(torch.tensor(duals), torch.tensor(errors), 1e-4, 100.0)
    assert_close(m_duals, t_duals, what="duals")
    np.testing.assert_allclose(np.array(m_duals), np.clip(np.tril(duals + 1e-4 * errors), -100, 100), atol=1e-5)


def test_full_update_matches_twin_and_formulas(twin_encoders):
    """One train_step of each script (MLX compiled as the script compiles it) from the same weights,
    multipliers and batch: the same encoder, duals, barrier and running mean come out, the same losses
    are returned; and against the formulas: torch's encoder moved by Adam's first step with the
    authors' settings (lr 1e-3, eps 1e-8), the duals and barrier by their update rules."""
    from functools import partial

    t_enc, m_enc = twin_encoders
    args = A_MLX.Args()
    hp = {k: getattr(args, k) for k in ("lr_duals", "max_duals", "q_error_update_rate", "lr_barrier_coefs", "max_barrier_coefs")}
    hp["lr_duals"] = 0.05  # the default 1e-4 would move the duals too little to tell a wrong rule from a right one
    rng = np.random.default_rng(0)
    obs = rng.uniform(-0.5, 0.5, size=(4 * B, 2)).astype(np.float32)
    init = {
        "duals": (0.5 * np.tril(rng.normal(size=(D, D)))).astype(np.float32),
        "barrier": np.float32(0.8),
        "quadratic_errors": (0.01 * np.tril(rng.normal(size=(D, D)))).astype(np.float32),  # not the first step
    }
    with torch.no_grad():
        _, (graph, dual, barrier_loss, errors, quad) = A_TORCH.allo_loss(
            t_enc, torch.tensor(obs), *(torch.tensor(init[k]) for k in ("duals", "barrier"))
        )
    before = torch_params(t_enc)

    m_opt, t_opt = A_MLX.make_optimizer(m_enc, args), A_TORCH.make_optimizer(t_enc, args)
    m_mult = {k: mx.array(v) for k, v in init.items()}
    t_mult = {k: torch.tensor(v) for k, v in init.items()}
    state = [m_enc.state, m_opt.state, m_mult]
    m_train = mx.compile(partial(A_MLX.train_step, m_enc, m_opt, m_mult, **hp), inputs=state, outputs=state)
    m_losses = m_train(mx.array(obs))
    mx.eval(m_losses, state)
    t_losses = A_TORCH.train_step(t_enc, t_opt, t_mult, torch.tensor(obs), **hp)

    assert_same_weights(m_enc, t_enc, atol=1e-5, what="encoder")
    for k in init:
        assert_close(m_mult[k], t_mult[k], atol=1e-6, what=k)
    assert_close(m_losses, t_losses, what="losses")
    np.testing.assert_allclose(t_losses.numpy()[1:], [graph.item(), dual.item(), barrier_loss.item()], rtol=1e-5)

    assert_first_adam_step(
        before, torch_params(t_enc), {k: p.grad.numpy() for k, p in t_enc.named_parameters()}, lr=1e-3, eps=1e-8
    )
    errors, quad = errors.numpy(), quad.numpy()
    duals = np.clip(np.tril(init["duals"] + hp["lr_duals"] * errors), -hp["max_duals"], hp["max_duals"])
    running = init["quadratic_errors"] + hp["q_error_update_rate"] * (quad - init["quadratic_errors"])
    barrier = np.clip(init["barrier"] + hp["lr_barrier_coefs"] * np.maximum(running, 0).mean(), 0, hp["max_barrier_coefs"])
    assert np.abs(duals - init["duals"]).max() > 1e-3 and abs(barrier - init["barrier"]) > 1e-5  # the check can fail
    np.testing.assert_allclose(t_mult["duals"].numpy(), duals, atol=1e-6)
    np.testing.assert_allclose(t_mult["quadratic_errors"].numpy(), running, atol=1e-7)
    np.testing.assert_allclose(t_mult["barrier"].numpy(), barrier, atol=1e-7)


def test_saved_encoder_loads_in_the_other_framework(twin_encoders, tmp_path):
    t_enc, m_enc = twin_encoders
    m_enc.update(tree_map(lambda p: p + 0.5, m_enc.parameters()))  # the twins now differ: each file must carry its own
    mx.eval(m_enc.parameters())
    fresh_m, fresh_t = cross_load(m_enc, t_enc, A_MLX.Encoder(2, D, (32, 32)), A_TORCH.Encoder(2, D, (32, 32)), tmp_path)
    assert_same_weights(fresh_m, t_enc, atol=0)
    assert_same_weights(m_enc, fresh_t, atol=0)


# --- runs of the scripts -------------------------------------------------------------------------

TINY = ["--env-id", SMALL, "--d", "3", "--n-samples", "2040", "--total-train-steps", "30", "--batch-size", "32"]
TINY += ["--hidden-dims", "16", "16", "--eval-frequency", "10", "--seed", "3"]
FRAMEWORKS = ["mlx", "torch"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_runs_logs_saves_and_plots(framework, tmp_path):
    proc = run_script("allo", framework, *TINY, "--save-model", "--plot", cwd=tmp_path)
    check_ok(proc)
    scalars = scalars_of_single_run(tmp_path)
    for tag in ("charts/SPS", "timing/sample_us", "timing/update_us", "losses/loss", "losses/graph_loss", "losses/dual_loss"):
        assert len(scalars.get(tag, [])) == 3, f"{tag}: {scalars.get(tag)}; got {sorted(scalars)}"
    for tag in ("losses/barrier_loss", "charts/barrier_coef", "eval/cosine_similarity", "eval/cosine_similarity_2"):
        assert [s for s, _ in scalars[tag]] == [10, 20, 30], tag
    assert "eval/saved_cosine_similarity" in scalars
    (run_dir,) = run_dirs(tmp_path)
    assert (run_dir / "eigenvectors.png").read_bytes()[:4] == b"\x89PNG"
    # the saved encoder loads in the other framework and scores what this run logged
    (model_path,) = run_dir.glob("*.safetensors")
    other = A_TORCH if framework == "mlx" else A_MLX
    cos = other.evaluate(str(model_path), other.parse_layout(other.LAYOUTS[SMALL]), 3, (16, 16), other.Encoder)
    assert abs(cos.mean() - scalars["eval/cosine_similarity"][-1][1]) < 1e-4


def test_mlx_same_seed_same_run(tmp_path):
    logged = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        check_ok(run_script("allo", "mlx", *TINY, cwd=tmp_path / sub))
        scalars = scalars_of_single_run(tmp_path / sub)
        logged.append([v for tag in ("losses/loss", "eval/cosine_similarity") for _, v in scalars[tag]])
    assert len(logged[0]) == 6
    np.testing.assert_array_equal(logged[0], logged[1])


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("text,message", [("XXXX\nX  X\nX X\nXXXX\n", "all the same length"), ("XXX\nXXX\n", "no free cell")])
def test_bad_layout_file_is_one_clear_line(framework, text, message, tmp_path):
    (tmp_path / "layout.txt").write_text(text)
    proc = run_script("allo", framework, "--layout-file", "layout.txt", cwd=tmp_path, timeout=120)
    assert_rejected(proc, message, tmp_path)


def test_layout_file_names_the_run(tmp_path):
    (tmp_path / "corridor.txt").write_text("XXXXXXX\nX     X\nXXXXXXX\n")
    check_ok(run_script("allo", "mlx", *TINY, "--layout-file", "corridor.txt", "--d", "2", cwd=tmp_path))
    (run_dir,) = run_dirs(tmp_path)
    assert run_dir.name.startswith("corridor__allo_mlx__3__")


# --- learning ------------------------------------------------------------------------------------

LEARN = ["--env-id", SMALL, "--d", "5", "--hidden-dims", "64", "64", "64", "--batch-size", "256"]
LEARN += ["--total-train-steps", "4000", "--eval-frequency", "500", "--seed", "1"]


@pytest.mark.learning
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_learns_the_smallest_eigenvectors(framework, tmp_path):
    proc = run_script("allo", framework, *LEARN, cwd=tmp_path, timeout=1200)
    check_ok(proc)
    scalars = scalars_of_single_run(tmp_path)
    final = scalars["eval/cosine_similarity"][-1][1]
    assert scalars["eval/cosine_similarity"][0][1] < 0.8  # it had something to learn
    assert final >= 0.95, f"allo_{framework}: cosine similarity {final:.3f} < 0.95 after 4000 steps"
