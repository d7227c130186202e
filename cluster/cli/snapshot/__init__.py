"""`thawline snapshot ...`: commands.py holds the verbs (mounted by cluster/cli/main.py);
on_cluster.py runs `create --on-cluster` as a Ray task on a GPU node, progress.py draws the
engine capture's phases, helpers.py has the small shared pieces."""
