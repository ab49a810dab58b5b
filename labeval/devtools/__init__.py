"""Developer tools: the simulated world of labs, the demo built on it, benchmarks."""
