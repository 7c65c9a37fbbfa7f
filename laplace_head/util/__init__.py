"""Small shared tools: atomic file I/O, seeding, console logging and user errors, wandb
tracking, devices, fault injection for the reliability tests."""
