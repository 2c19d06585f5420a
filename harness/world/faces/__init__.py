"""The aligned portrait world: the h-space paper's five attributes on one centred face per image."""
