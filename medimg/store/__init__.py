"""The run store (one folder per run: run.json, events, model) and the workbench's kept choices."""
