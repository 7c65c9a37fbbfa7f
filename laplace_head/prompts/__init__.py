"""Stage 2: seeded point-prompt sampling, Gaussian prompt maps and the prompt-set JSONs."""
