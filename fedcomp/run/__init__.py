"""Settings, presets, the experiment (data and model of a run) and the compute device."""
