"""The recipes, one file per stage: config -> data -> model -> objective -> Trainer -> artifact.

A recipe imports components (model/, data/, train/, eval/, infer/) and two files of this
package: frame.py (its start and finish) and summaries.py (the schema of its summary.json).
No recipe imports another (pyproject.toml's import-linter contract); verbs/ registers them.
"""
