"""Reading runs afterwards: sweeps, frontiers, reports and comparisons."""
