"""Streaming training and prediction over chunks of regions, with context state per scene."""
