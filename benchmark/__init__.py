"""Side-by-side benchmarks of the MLX scripts and their PyTorch twins."""
