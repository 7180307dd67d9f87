"""A user's own VGG-style CNN and image folder (see README.md)."""
