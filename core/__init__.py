"""The leaf every stage stands on: model profiles, the user-facing error, file utilities,
command-line plumbing, result records and the usable CPU count. It imports no other package."""
