"""The leaf every stage stands on: model profiles, the user-facing error, file utilities.

Nothing in ``core`` imports another package of this project.
"""
