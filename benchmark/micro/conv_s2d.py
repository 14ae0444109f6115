"""Micro-benchmark: the Nature CNN's loss gradient on MLX's CPU backend with plain strided convolutions
(mlx.nn.Conv2d) vs the space-to-depth + stride-1 form the Atari scripts use (same weights, same math).

Usage: OMP_NUM_THREADS=1 python -m benchmark.micro.conv_s2d [--batch 256] [--repeats 10]
"""

import argparse
import time

from benchmark.pairs import load_script  # loads the script's OpenBLAS block before MLX

P = load_script("ppo_atari", "mlx")
mx, nn = P.mx, P.nn


class PlainCNN(nn.Module):
    """The same network with mlx.nn.Conv2d (NHWC, weight (out, kh, kw, in)) and strided convolutions."""

    def __init__(self, s2d_agent):
        super().__init__()
        self.convs = []
        for layer in s2d_agent.network[0:5:2]:
            out_c, in_c, k, _ = layer.weight.shape
            conv = nn.Conv2d(in_c, out_c, k, stride=layer.stride)
            conv.weight = layer.weight.transpose(0, 2, 3, 1)
            conv.bias = layer.bias
            self.convs.append(conv)
        self.linear = s2d_agent.network[7]

    def __call__(self, x):
        x = (x.astype(mx.float32) / 255.0).transpose(0, 2, 3, 1)
        for conv in self.convs:
            x = nn.relu(conv(x))
        return nn.relu(self.linear(x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)))


class S2DCNN(nn.Module):
    """The Atari scripts' network trunk: torch-layout weights, space-to-depth + stride-1 convolutions."""

    def __init__(self, agent):
        super().__init__()
        self.network = agent.network

    def __call__(self, x):
        return P.Agent.hidden(self, x)  # the scripts' own trunk: scale, NHWC, its layers


def time_grad(model, x, repeats):
    loss_and_grad = nn.value_and_grad(model, lambda x: (model(x) ** 2).mean())
    step = mx.compile(loss_and_grad, inputs=[model.state], outputs=[model.state])
    mx.eval(step(x))  # compile + warm up
    t0 = time.perf_counter()
    for _ in range(repeats):
        mx.eval(step(x))
    return (time.perf_counter() - t0) / repeats


def time_forward(model, x, repeats):
    fwd = mx.compile(lambda x: model(x), inputs=[model.state])
    mx.eval(fwd(x))
    t0 = time.perf_counter()
    for _ in range(repeats):
        mx.eval(fwd(x))
    return (time.perf_counter() - t0) / repeats


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cache-limit-mb", type=int, default=None, help="MLX buffer-cache limit (default: MLX's, 32 MB on CPU)")
    args = parser.parse_args()
    mx.set_default_device(mx.cpu)
    if args.cache_limit_mb is not None:
        mx.set_cache_limit(args.cache_limit_mb << 20)
    agent = P.Agent(4)
    models = {"plain strided conv": PlainCNN(agent), "space-to-depth": S2DCNN(agent)}
    mx.eval([m.parameters() for m in models.values()])
    x = mx.random.randint(0, 256, (args.batch, 4, 84, 84)).astype(mx.uint8)
    outs = [m(x) for m in models.values()]
    assert mx.allclose(outs[0], outs[1], atol=1e-4).item(), "the two forms disagree"
    print(
        f"mlx {mx.__version__}, BLAS {P.BLAS}, batch {args.batch}, {args.repeats} repeats, cache limit {args.cache_limit_mb or 32} MB"
    )
    for name, model in models.items():
        fwd, grad = time_forward(model, x, args.repeats), time_grad(model, x, args.repeats)
        print(f"{name:>20}: forward {1e3 * fwd:8.1f} ms   forward+backward {1e3 * grad:8.1f} ms")
