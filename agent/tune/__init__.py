"""`edge-agent tune`: candidate setups measured for fps, latency and energy; the best one.

search (candidates, Pareto front, the choice under constraints, the overlay), plot (the SVG),
power_modes (nvpmodel). The measuring is agent/cli/tune.py, with bench's functions.
"""
