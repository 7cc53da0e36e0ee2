"""freelance-lab: scripted experiments with producers and workers joining and leaving a network (scenarios, runner, report)."""
