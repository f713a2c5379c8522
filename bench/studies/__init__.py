"""One-off studies: scripts that answered one question once. Their conclusions are in bench/README.md
("Findings"); each still runs from the repository root as `python -m bench.studies.<name>`."""
