"""ALLO (Gomez, Bowling, Machado, ICLR 2024) in eager PyTorch: the reference twin of cleanrl_mlx/allo_mlx.py.

Docs: docs/allo.md. Run: python cleanrl_torch_reference/allo_torch.py --env-id GridRoom-16 --plot
"""

import os
import random
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
import tyro
from safetensors.torch import load_file, save_file
from tensorboardX import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=False`"""
    cuda: bool = True
    """if toggled, cuda will be enabled by default"""
    track: bool = False
    """if toggled, this experiment will be tracked with Weights and Biases"""
    wandb_project_name: str = "cleanrl-mlx"
    """the wandb's project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    save_model: bool = False
    """whether to save the encoder into the `runs/{run_name}` folder, then evaluate it"""
    plot: bool = False
    """if toggled, write a PNG of learned vs true eigenvectors to `runs/{run_name}` at the end"""

    # Algorithm specific arguments
    env_id: str = "GridRoom-16"
    """the gridworld layout: GridRoomSmallAsym-1, GridRoom-4, GridRoom-16 or GridMaze-17"""
    layout_file: Optional[str] = None
    """a text layout ('X' wall, anything else free) used instead of --env-id (which becomes its stem)"""
    d: int = 11
    """the number of eigenvectors to learn (the encoder's output size)"""
    n_samples: int = 200000
    """states collected by the uniform random policy, in whole episodes of max_episode_steps+1 states"""
    max_episode_steps: int = 50
    """the length of every episode (episodes never end early)"""
    total_train_steps: int = 20000
    """the number of gradient steps"""
    batch_size: int = 1024
    """the size of each of the four state batches of a gradient step"""
    learning_rate: float = 1e-3
    """the learning rate of the Adam optimizer"""
    hidden_dims: tuple[int, ...] = (256, 256, 256)
    """the widths of the encoder's hidden ReLU layers"""
    gamma: float = 0.9
    """the discount of the truncated geometric offset between paired states"""
    lr_duals: float = 1e-4
    """the step size of the dual variables"""
    max_duals: float = 100.0
    """the dual variables are clipped to [-max_duals, max_duals]"""
    barrier_initial_val: float = 0.5
    """the initial barrier coefficient (the authors' experiment scripts; their yaml's 2.0 stalls on small grids)"""
    lr_barrier_coefs: float = 0.01
    """the step size of the barrier coefficient (the authors' experiment scripts; their yaml has 1.0)"""
    max_barrier_coefs: float = 1e4
    """the barrier coefficient is clipped to [0, max_barrier_coefs]"""
    q_error_update_rate: float = 0.1
    """the rate of the running mean of the squared constraint errors that drives the barrier"""
    eval_frequency: int = 200
    """log losses, cosine similarity and SPS every this many gradient steps"""


# Layouts of the authors' repository (src/env/grid/txts): 'X' is a wall, anything else a free cell.
LAYOUTS = {
    "GridRoomSmallAsym-1": """\
XXXXXXXX
X      X
X      X
X      X
X      X
X      X
XXXXXXXX""",
    "GridRoom-4": """\
XXXXXXXXXXXXX
X     X     X
X           X
X     X     X
X     X     X
X     X     X
XXX XXXXXX XX
X      X    X
X      X    X
X           X
X      X    X
X      X    X
XXXXXXXXXXXXX""",
    "GridRoom-16": """\
XXXXXXXXXXXXXXXXXXXXX
X    X    X    X    X
X         X         X
X    X         X    X
X    X    X    X    X
XXXXXXXXXXXXXXXXXX XX
X    X    X    X    X
X         X    X    X
X    X         X    X
X    X    X    X    X
XXX XXXXXXXXX XXX XXX
X    X    X    X    X
X    X    X    X    X
X    X         X    X
X    X    X    X    X
XX XXXXXXXXXXXXXXX XX
X    X    X    X    X
X    X         X    X
X         X         X
X    X    X    X    X
XXXXXXXXXXXXXXXXXXXXX""",
    "GridMaze-17": """\
XXXXXXXXXXXXXXXXXXX
X    XXXXXX       X
X XX XXXXXX XXXXX X
X XX XXXXXX XXXXX X
X XX XXXXXX XX XX X
X XX XXXXXX XX XX X
X XX XXXXXX XX XX X
X XX XXXXXX XX XX X
X XX XX     XX XX X
X XX XX XXXXXX XX X
X XX XX XXXXXX XX X
X XX XX XXXXXX XX X
X XX XX XXXXXX XX X
X XXXXX XXXXXX XX X
X XXXXX XXXXXX XX X
X       XXXXXX    X
XXXXXXXXXXXXXXXXXXX""",
}


def parse_layout(text: str) -> np.ndarray:
    """Layout text -> boolean grid, True where free. Raises ValueError on a malformed layout."""
    rows = [line.rstrip("\r") for line in text.split("\n")]
    while rows and not rows[-1].strip():
        rows.pop()
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError("rows must be non-empty and all the same length")
    grid = np.array([[c not in "Xx" for c in row] for row in rows])
    if not grid.any():
        raise ValueError("no free cell")
    return grid


def grid_dynamics(grid):
    """Free cells (row, col) in row-major order, and next_state[s, a] for the four moves (down, right,
    up, left, as the authors order them); a move into a wall or off the grid stays in place."""
    cells = np.argwhere(grid)
    index = -np.ones(grid.shape, dtype=np.int64)
    index[cells[:, 0], cells[:, 1]] = np.arange(len(cells))
    next_state = np.empty((len(cells), 4), dtype=np.int64)
    for a, (dr, dc) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
        r, c = cells[:, 0] + dr, cells[:, 1] + dc
        inside = (r >= 0) & (r < grid.shape[0]) & (c >= 0) & (c < grid.shape[1])
        target = np.where(inside, index[r.clip(0, grid.shape[0] - 1), c.clip(0, grid.shape[1] - 1)], -1)
        next_state[:, a] = np.where(target >= 0, target, np.arange(len(cells)))
    return cells, next_state


def transition_matrix(next_state):
    """The uniform random policy's transition matrix (float64; blocked moves are self-loops)."""
    n = len(next_state)
    P = np.zeros((n, n))
    np.add.at(P, (np.repeat(np.arange(n), 4), next_state.reshape(-1)), 0.25)
    return P


def collect_episodes(next_state, num_episodes, max_episode_steps, rng):
    """Uniform random walks from uniform start cells: state ids [num_episodes, max_episode_steps + 1]."""
    episodes = np.empty((num_episodes, max_episode_steps + 1), dtype=np.int32)
    episodes[:, 0] = rng.integers(0, len(next_state), size=num_episodes)
    actions = rng.integers(0, 4, size=(num_episodes, max_episode_steps))
    for t in range(max_episode_steps):
        episodes[:, t + 1] = next_state[episodes[:, t], actions[:, t]]
    return episodes


def truncated_geometric(n, gamma, rng):
    """One draw in {0, ..., n-1} per entry of n, with P(i) proportional to gamma**i (inverse CDF)."""
    u = rng.random(n.shape)
    if gamma == 0.0:
        return np.zeros(n.shape, dtype=np.int64)
    if gamma == 1.0:
        return np.floor(u * n).astype(np.int64)
    return np.minimum(np.floor(np.log1p(-(1.0 - gamma**n) * u) / np.log(gamma)).astype(np.int64), n - 1)


def sample_batch(episodes, batch_size, gamma, rng):
    """State ids [s, s', u1, u2] concatenated (4 * batch_size,): pairs (s, s') of one episode, s uniform among the steps with
    a successor and s' 1 + a truncated geometric draw later (never past the episode's end), then two uniform batches."""
    num_episodes, episode_len = episodes.shape
    ep = rng.integers(0, num_episodes, size=batch_size)
    t1 = rng.integers(0, episode_len - 1, size=batch_size)
    t2 = t1 + 1 + truncated_geometric(episode_len - 1 - t1, gamma, rng)
    ep1, t_u1 = rng.integers(0, num_episodes, size=batch_size), rng.integers(0, episode_len, size=batch_size)
    ep2, t_u2 = rng.integers(0, num_episodes, size=batch_size), rng.integers(0, episode_len, size=batch_size)
    return episodes[np.concatenate([ep, ep, ep1, ep2]), np.concatenate([t1, t2, t_u1, t_u2])]


def laplacian_eigenpairs(P):
    """Eigenvalues (ascending) and unit eigenvectors of the Laplacian I - P, in float64."""
    return np.linalg.eigh(np.eye(len(P)) - P)


def eigen_blocks(eigvals, d, tol=1e-8):
    """Groups of equal eigenvalues among the d smallest: (start, stop) index pairs; the last group
    may run past d when d cuts a repeated eigenvalue."""
    blocks, start = [], 0
    while start < d:
        stop = start + 1
        while stop < len(eigvals) and eigvals[stop] - eigvals[start] < tol:
            stop += 1
        blocks.append((start, stop))
        start = stop
    return blocks


def align_to_eigenvectors(learned, eigvals, eigvecs):
    """Per-vector |cosine| of learned [n_states, d] with the true eigenvectors, and the learned vectors
    as compared (unit norm, signs matched). Within a repeated eigenvalue the learned vectors are first
    rotated to their best match (orthogonal Procrustes), since any basis of the eigenspace is right;
    where d cuts a repeated eigenvalue, the cut vectors are scored by their cosine with the eigenspace."""
    d = learned.shape[1]
    aligned = learned / np.maximum(np.linalg.norm(learned, axis=0, keepdims=True), 1e-12)
    cos = np.empty(d)
    for start, stop in eigen_blocks(eigvals, d):
        U, A = eigvecs[:, start:stop], learned[:, start : min(stop, d)]
        if stop <= d:  # the rotation R maximising trace(U^T A R): U^T A = X S Y^T -> R = Y X^T
            X, _, Yt = np.linalg.svd(U.T @ A)
            A = A @ (Yt.T @ X.T)
        A = A / np.maximum(np.linalg.norm(A, axis=0, keepdims=True), 1e-12)
        cos[start : min(stop, d)] = np.abs(np.sum(U * A, axis=0)) if stop <= d else np.linalg.norm(U.T @ A, axis=0)
        sign = np.sign(np.sum(eigvecs[:, start : min(stop, d)] * A, axis=0))
        aligned[:, start : min(stop, d)] = A * np.where(sign == 0, 1.0, sign)
    return cos, aligned


class Encoder(nn.Module):
    # Framework-default init, the same uniform law in both twins (the authors' Haiku MLP draws weights
    # from a truncated normal and zeroes biases).
    def __init__(self, obs_dim, d, hidden_dims):
        super().__init__()
        layers = []
        for width in hidden_dims:
            layers += [nn.Linear(obs_dim, width), nn.ReLU()]
            obs_dim = width
        layers.append(nn.Linear(obs_dim, d))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x):
        return self.encoder(x)


def orthogonality_error(phi):
    """E = tril(M - I), M[j, k] = mean phi_j(u) * stopgrad(phi_k(u)): entry (j, k) moves only vector
    j >= k, so a vector is never pushed by the constraints of the vectors after it."""
    inner = phi.T @ phi.detach() / phi.shape[0]
    return torch.tril(inner - torch.eye(phi.shape[1], device=phi.device))


def allo_objective(phi_s, phi_next, phi_u1, phi_u2, duals, barrier):
    """The ALLO Lagrangian on encoded batches. Returns (loss, (graph_loss, dual_loss, barrier_loss,
    errors, quadratic_errors)); only `loss` is differentiated, the duals and barrier are held fixed."""
    graph_loss = ((phi_s - phi_next) ** 2).mean(0).sum()
    error_1, error_2 = orthogonality_error(phi_u1), orthogonality_error(phi_u2)
    errors = 0.5 * (error_1 + error_2)
    quadratic_errors = error_1 * error_2  # unbiased estimate of the squared error from two batches
    dual_loss = (duals.detach() * errors).sum()
    barrier_loss = barrier.detach() * quadratic_errors.sum()
    loss = graph_loss + dual_loss + barrier_loss
    aux = (graph_loss, dual_loss, barrier_loss, errors.detach(), quadratic_errors.detach())
    return loss, aux


def allo_loss(encoder, obs, duals, barrier):
    """One encoder forward over the concatenated [s, s', u1, u2] observations, then allo_objective."""
    phi_s, phi_next, phi_u1, phi_u2 = torch.chunk(encoder(obs), 4, dim=0)
    return allo_objective(phi_s, phi_next, phi_u1, phi_u2, duals, barrier)


def update_duals(duals, errors, lr_duals, max_duals):
    """Gradient ascent on the duals: beta <- clip(tril(beta + lr * E), -max, max)."""
    return torch.clamp(torch.tril(duals + lr_duals * errors), -max_duals, max_duals)


def update_barrier(barrier, running_quadratic_errors, quadratic_errors, rate, lr_barrier, max_barrier):
    """Running mean of E1 * E2 (its first value taken whole, as the authors do), then
    b <- clip(b + lr * mean(max(running mean, 0)), 0, max)."""
    rate = torch.where(torch.all(running_quadratic_errors == 0), 1.0, rate)
    running = running_quadratic_errors + rate * (quadratic_errors - running_quadratic_errors)
    barrier = torch.clamp(barrier + lr_barrier * torch.clamp(running, min=0).mean(), 0.0, max_barrier)
    return barrier, running


def make_optimizer(encoder, args):
    """Adam as the authors use it (optax's defaults: eps 1e-8, bias-corrected)."""
    return optim.Adam(encoder.parameters(), lr=args.learning_rate)


def train_step(
    encoder, optimizer, multipliers, obs, lr_duals, max_duals, q_error_update_rate, lr_barrier_coefs, max_barrier_coefs
):
    """One gradient step on the encoder (forward, backward, Adam), then gradient ascent on the duals and
    the barrier update, written back into `multipliers`. Returns [loss, graph_loss, dual_loss, barrier_loss]."""
    loss, aux = allo_loss(encoder, obs, multipliers["duals"], multipliers["barrier"])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    graph_loss, dual_loss, barrier_loss, errors, quadratic_errors = aux
    multipliers["duals"] = update_duals(multipliers["duals"], errors, lr_duals, max_duals)
    multipliers["barrier"], multipliers["quadratic_errors"] = update_barrier(
        multipliers["barrier"],
        multipliers["quadratic_errors"],
        quadratic_errors,
        q_error_update_rate,
        lr_barrier_coefs,
        max_barrier_coefs,
    )
    return torch.stack([loss, graph_loss, dual_loss, barrier_loss]).detach()


def encode_states(encoder, states_obs):
    with torch.no_grad():
        return encoder(torch.tensor(states_obs, device=next(encoder.parameters()).device)).cpu().numpy().astype(np.float64)


def evaluate(model_path, grid, d, hidden_dims, Model):
    """Load a saved encoder and return its per-vector cosine similarity with the true eigenvectors."""
    cells, next_state = grid_dynamics(grid)
    eigvals, eigvecs = laplacian_eigenpairs(transition_matrix(next_state))
    encoder = Model(2, d, hidden_dims)
    encoder.load_state_dict(load_file(model_path))  # evaluation runs on the cpu
    states_obs = (cells / np.array(grid.shape) - 0.5).astype(np.float32)
    return align_to_eigenvectors(encode_states(encoder, states_obs), eigvals, eigvecs)[0]


def plot_eigenvectors(path, grid, cells, eigvecs, aligned, cos):
    """One PNG: true eigenvectors (top row) and learned ones (bottom) as heat maps on the grid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = aligned.shape[1]
    cmap = matplotlib.colormaps["coolwarm"].with_extremes(bad="dimgray")  # walls are NaN: gray
    fig, axes = plt.subplots(2, d, figsize=(1.6 * d, 4.0), squeeze=False)
    for row, vectors in enumerate((eigvecs[:, :d], aligned)):
        for i in range(d):
            image = np.full(grid.shape, np.nan)
            image[cells[:, 0], cells[:, 1]] = vectors[:, i]
            lim = np.abs(vectors[:, i]).max()
            axes[row, i].imshow(image, cmap=cmap, vmin=-lim, vmax=lim)
            axes[row, i].set(xticks=[], yticks=[])
            axes[row, i].set_title(f"true {i}" if row == 0 else f"learned {i}\ncos {cos[i]:.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def check_args(args: Args, script: str) -> np.ndarray:
    """Reject bad input with one clear line before anything is created; returns the parsed layout."""
    positive = ("n_samples", "max_episode_steps", "total_train_steps", "batch_size", "learning_rate", "lr_duals", "max_duals")
    limits = {k: (getattr(args, k) > 0, "positive") for k in positive + ("max_barrier_coefs", "eval_frequency")}
    limits |= {k: (getattr(args, k) >= 0, "non-negative") for k in ("barrier_initial_val", "lr_barrier_coefs")}
    limits["hidden_dims"] = (all(width > 0 for width in args.hidden_dims), "positive widths")
    limits["gamma"] = (0 <= args.gamma <= 1, "in [0, 1]")
    limits["q_error_update_rate"] = (0 < args.q_error_update_rate <= 1, "in (0, 1]")
    for name, (valid, must) in limits.items():
        if not valid:
            raise SystemExit(f"{script}: --{name.replace('_', '-')} must be {must}, got {getattr(args, name)}")
    if args.layout_file is not None:
        try:
            text = Path(args.layout_file).read_text()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not a text file"
            raise SystemExit(f"{script}: cannot read --layout-file {args.layout_file!r}: {reason}") from None
    elif args.env_id in LAYOUTS:
        text = LAYOUTS[args.env_id]
    else:
        raise SystemExit(f"{script}: unknown layout {args.env_id!r} (choose from {', '.join(LAYOUTS)} or pass --layout-file)")
    try:
        grid = parse_layout(text)
    except ValueError as e:
        raise SystemExit(f"{script}: bad layout {args.layout_file or args.env_id!r}: {e}") from None
    if not 1 <= args.d <= grid.sum():
        raise SystemExit(f"{script}: --d must be between 1 and the number of free cells ({grid.sum()}), got {args.d}")
    if args.n_samples < args.max_episode_steps + 1:
        raise SystemExit(f"{script}: --n-samples {args.n_samples} is less than one episode ({args.max_episode_steps + 1} states)")
    return grid


if __name__ == "__main__":
    script = os.path.basename(__file__)
    args = tyro.cli(Args)
    grid = check_args(args, script)
    if args.layout_file is not None:
        args.env_id = Path(args.layout_file).stem
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # TRY NOT TO MODIFY: seeding
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")
    print(f"{script}: torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    rng = np.random.default_rng(args.seed)  # every data draw (episodes, batches): same stream in the twin

    config = vars(args) | {"framework": "torch", "algo": "allo"}
    if args.track:
        import wandb

        wandb.tensorboard.patch(root_logdir=f"runs/{run_name}")  # named here, W&B does not spend 10 s at exit inferring it
        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=config,
            name=run_name,
            group=f"allo__{args.env_id}",
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in config.items()))

    # Gridworld, ground truth and data: the uniform policy's Laplacian eigenvectors (float64), and
    # whole random-walk episodes of state ids, collected once
    cells, next_state = grid_dynamics(grid)
    eigvals, eigvecs = laplacian_eigenpairs(transition_matrix(next_state))
    states_obs = (cells / np.array(grid.shape) - 0.5).astype(np.float32)  # (row, col) scaled as the authors do
    episodes = collect_episodes(next_state, args.n_samples // (args.max_episode_steps + 1), args.max_episode_steps, rng)
    print(f"{args.env_id}: {len(cells)} states, {len(episodes)} episodes, smallest eigenvalues {np.round(eigvals[: args.d], 5)}")

    encoder = Encoder(2, args.d, args.hidden_dims).to(device)
    optimizer = make_optimizer(encoder, args)
    multipliers = {
        "duals": torch.zeros((args.d, args.d), device=device),
        "barrier": torch.tensor(args.barrier_initial_val, device=device),
        "quadratic_errors": torch.zeros((args.d, args.d), device=device),  # running mean of E1 * E2
    }
    obs_table = torch.tensor(states_obs, device=device)  # batches arrive as state ids and are turned into observations on device

    # ALGO LOGIC: forward, backward, Adam, then the dual and barrier updates
    hp = {k: getattr(args, k) for k in ("lr_duals", "max_duals", "q_error_update_rate", "lr_barrier_coefs", "max_barrier_coefs")}
    train = partial(train_step, encoder, optimizer, multipliers, **hp)

    start_time = time.time()
    timing = dict.fromkeys(("sample", "update"), 0.0)  # seconds per phase since the last log
    last_log = 0
    for global_step in (progress := tqdm(range(1, args.total_train_steps + 1), disable=not sys.stderr.isatty())):
        t0 = time.perf_counter()
        ids = torch.as_tensor(sample_batch(episodes, args.batch_size, args.gamma, rng), device=device)
        t1 = time.perf_counter()
        losses = train(obs_table[ids])
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step is only done when the device is
        timing["sample"] += t1 - t0
        timing["update"] += time.perf_counter() - t1

        # TRY NOT TO MODIFY: record losses and the cosine similarity for plotting purposes
        if global_step % args.eval_frequency == 0 or global_step == args.total_train_steps:
            cos, _ = align_to_eigenvectors(encode_states(encoder, states_obs), eigvals, eigvecs)
            loss, graph_loss, dual_loss, barrier_loss = losses.tolist()
            sps = int(global_step / (time.time() - start_time))
            writer.add_scalar("losses/loss", loss, global_step)
            writer.add_scalar("losses/graph_loss", graph_loss, global_step)
            writer.add_scalar("losses/dual_loss", dual_loss, global_step)
            writer.add_scalar("losses/barrier_loss", barrier_loss, global_step)
            writer.add_scalar("charts/barrier_coef", multipliers["barrier"].item(), global_step)
            writer.add_scalar("eval/cosine_similarity", cos.mean(), global_step)
            for i, c in enumerate(cos):
                writer.add_scalar(f"eval/cosine_similarity_{i}", c, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            for phase, seconds in timing.items():
                writer.add_scalar(f"timing/{phase}_us", 1e6 * seconds / (global_step - last_log), global_step)
            timing, last_log = dict.fromkeys(timing, 0.0), global_step
            progress.set_postfix(SPS=sps, cos=f"{cos.mean():.4f}")
            if progress.disable:  # no bar (not a TTY): print progress lines instead
                print(f"global_step={global_step}, cosine_similarity={cos.mean():.4f}, SPS: {sps}")

    if args.save_model:
        model_path = f"runs/{run_name}/{args.exp_name}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, model_path)
        print(f"model saved to {model_path}")
        cos = evaluate(model_path, grid, args.d, args.hidden_dims, Encoder)
        print(f"saved encoder: cosine_similarity={cos.mean():.4f}")
        writer.add_scalar("eval/saved_cosine_similarity", cos.mean(), args.total_train_steps)
    if args.plot:
        cos, aligned = align_to_eigenvectors(encode_states(encoder, states_obs), eigvals, eigvecs)
        plot_path = f"runs/{run_name}/eigenvectors.png"
        plot_eigenvectors(plot_path, grid, cells, eigvecs, aligned, cos)
        print(f"plot saved to {plot_path}")

    writer.close()
