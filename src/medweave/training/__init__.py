"""What keeps long training alive: preemption and resume, and checkpoints that survive a kill."""
