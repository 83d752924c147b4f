"""Print the lower bound (``>=X``) that pyproject.toml declares for one dependency: ``lower_bound.py NAME``."""

import re
import sys
import tomllib
from pathlib import Path

name = sys.argv[1]
project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
for spec in project["dependencies"]:
    match = re.fullmatch(rf"{re.escape(name)}\s*>=\s*([^,;\s]+).*", spec)
    if match:
        print(match.group(1))
        sys.exit(0)
sys.exit(f"pyproject.toml declares no lower bound for {name}")
