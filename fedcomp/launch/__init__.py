"""Starting runs: the simulation, the local deployment and the processes they own."""
