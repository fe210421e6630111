"""Tasks: what a region is labelled with, how a head is trained on it and decoded."""
