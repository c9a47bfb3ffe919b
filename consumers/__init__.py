"""Workers: inference with batching, network deployment."""
