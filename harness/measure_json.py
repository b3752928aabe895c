"""Reading `biaslens measure --json` files in the harness scripts (gap-bounds.py, gap-map.py,
subject-separability.py). Standard library only."""
import json
import math
import sys


def prompts(path):
    """The per-prompt rows of a measure file; exits naming the file when it is not one."""
    try:
        return json.load(open(path))["prompts"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"{path}: expected a `biaslens measure --json` file ({e})")


def log_odds(p):
    """L = log p(he) - log p(she) of one prompt row."""
    return math.log(p["p_he"] / p["p_she"])
