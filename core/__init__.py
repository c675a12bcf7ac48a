"""The leaf every stage stands on: model profiles, the user-facing error, file helpers.

Nothing in ``core`` imports another package of this project.
"""
