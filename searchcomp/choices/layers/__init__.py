"""The built-in layer replacements, one module each; every module here is imported by the
registry on first use (a new choice is one new file in this folder)."""
